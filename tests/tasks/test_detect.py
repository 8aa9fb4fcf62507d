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
