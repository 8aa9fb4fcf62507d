"""The `detect` step: a refresh run per source, and changes since the cursor the catalog lacks."""

from __future__ import annotations

from sqlalchemy import select

from tasks.catalog.db import session_scope
from tasks.catalog.models import RefreshRun
from tasks.catalog.types import RunStatus
from tasks.detect import detect
from tests.fixtures.kb import record_all


def test_detect_opens_a_run_and_lists_the_changes_then_nothing_once_recorded(kb):
    from tasks.runtime import runtime

    plan, _ = record_all(kb)
    assert plan.error is None and sorted(c.key for c in plan.changes) == [
        "alpha.md",
        "beta.txt",
        "gamma.html",
    ]
    again = detect(str(kb), "docs")
    assert again.changes == [] and again.run_id != plan.run_id
    with session_scope(runtime(kb).sessions) as s:
        runs = s.scalars(select(RefreshRun).order_by(RefreshRun.id)).all()
        assert [r.status for r in runs] == [RunStatus.SUCCEEDED, RunStatus.RUNNING]
        assert runs[0].source.uri == (kb.parent / "docs").resolve().as_uri()


def test_a_source_that_fails_as_a_whole_is_reported_not_raised(kb):
    (kb.parent / "docs").rename(kb.parent / "elsewhere")
    plan = detect(str(kb), "docs")
    assert plan.changes == [] and plan.run_id is not None
    assert "does not exist" in plan.error


def _kinds(kb) -> dict[str, tuple[str, int]]:
    """Every document's latest kind and how many versions it has."""
    from tasks.catalog import queries
    from tasks.catalog.models import Document
    from tasks.runtime import runtime

    with session_scope(runtime(kb).sessions) as s:
        docs = s.scalars(select(Document)).all()
        return {d.current_path: (queries.latest_version(s, d.id).kind.value, len(d.versions)) for d in docs}


def _set_content(kb, content: str) -> None:
    import yaml

    from tasks.runtime import forget_runtimes

    data = yaml.safe_load(kb.read_text())
    data["sources"][0]["content"] = content
    kb.write_text(yaml.safe_dump(data))
    forget_runtimes()


def test_a_changed_content_setting_reads_every_unchanged_document_again_once(kb):
    record_all(kb)
    assert {k for k, _ in _kinds(kb).values()} == {"knowledge"}
    _set_content(kb, "instruction")
    detect(str(kb), "docs")  # a run that dies before it records anything: the next one re-reads all
    plan, outcomes = record_all(kb)
    assert "content changed from knowledge to instruction" in plan.warnings[-1]
    assert sorted(c.key for c in plan.changes) == ["alpha.md", "beta.txt", "gamma.html"]
    assert all(c.reread for c in plan.changes) and all(o.version_id for o in outcomes)
    assert {path: kind for path, (kind, _) in _kinds(kb).items()} == {
        "alpha.md": "instruction",
        "beta.txt": "instruction",
        "gamma.html": "instruction",
    }
    assert record_all(kb)[0].changes == [], "the new setting is applied once"
    _set_content(kb, "knowledge")
    plan, _ = record_all(kb)
    assert len(plan.changes) == 3 and {v for v in _kinds(kb).values()} == {("knowledge", 3)}
