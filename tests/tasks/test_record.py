"""The `record` step: one catalog transaction per change; renames keep the text, bad input is on record."""

from __future__ import annotations

from tasks.catalog.db import session_scope
from tasks.catalog.models import Document
from tasks.catalog.types import DocumentState
from tasks.detect import detect
from tasks.record import record
from tasks.runtime import runtime
from tests.fixtures.kb import record_all


def test_record_stores_text_and_a_rename_copies_the_version_without_fetching(kb):
    _, outcomes = record_all(kb)
    assert all(o.error is None and o.version_id for o in outcomes)
    docs = kb.parent / "docs"
    (docs / "beta.txt").rename(docs / "beta2.txt")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not a pdf")
    plan = detect(str(kb), "docs")
    by_key = {c.key: record(str(kb), "docs", c) for c in plan.changes}
    assert by_key["beta2.txt"].error is None and "broken.pdf" in by_key["broken.pdf"].error
    with session_scope(runtime(kb).sessions) as s:
        beta = s.get(Document, by_key["beta2.txt"].document_id)
        assert beta.label == "docs:beta2.txt" and beta.external_key == "beta.txt"
        first, renamed = beta.versions
        assert renamed.change_kind == "renamed" and renamed.text_uri == first.text_uri
        assert s.get(Document, by_key["broken.pdf"].document_id).state is DocumentState.FAILED
