"""Audit: from a registered adapter back to the document revision, the generator and every alias move."""

from __future__ import annotations

import pytest

from tasks import audit
from tasks.generate import generate
from tasks.lifecycle import LifecycleError
from tasks.register import register
from tasks.sweep import sweep
from tests.fixtures.kb import record_all


def test_audit_answers_adapter_document_and_status_from_the_catalog(kb):
    record_all(kb)
    todo = sweep(str(kb), "docs")
    model = register(str(kb), generate(str(kb), todo.versions[0], todo.generator_id).adapter_id).model
    record = audit.audit_adapter(str(kb), f"{model}@production")
    assert record["document"]["current_path"] == "alpha.md" and record["generator"]["kind"] == "cd"
    assert [e["alias"] for e in record["alias_events"]] == ["candidate", "production"]
    doc = audit.audit_document(str(kb), "docs:alpha.md")
    assert doc["model"] == model and doc["production"] == "1" and len(doc["versions"]) == 1
    rows = {r["document"]: r for r in audit.status(str(kb))}
    assert rows["docs:alpha.md"]["production"] == "1" and rows["docs:beta.txt"]["production"] is None
    with pytest.raises(LifecycleError, match="NAME@VERSION"):
        audit.audit_adapter(str(kb), model)
