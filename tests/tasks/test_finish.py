"""The `finish` step: the cursor moves with a succeeded or partial run, and stays with a failed one."""

from __future__ import annotations

from tasks.catalog.db import session_scope
from tasks.catalog.models import RefreshRun
from tasks.catalog.types import RunStatus
from tasks.finish import finish
from tasks.runtime import runtime
from tasks.sources.git import GitCursor


def test_finish_stores_the_typed_cursor_as_json_only_when_every_change_was_recorded(kb):
    from tasks.detect import detect

    config = str(kb)
    first = detect(config, "docs")
    finish(config, first.run_id, RunStatus.SUCCEEDED, GitCursor("a" * 40), {"changed": 0})
    failed = detect(config, "docs")
    finish(config, failed.run_id, RunStatus.FAILED, GitCursor("b" * 40), {}, error="fetch failed")
    with session_scope(runtime(kb).sessions) as s:
        one, two = s.get(RefreshRun, first.run_id), s.get(RefreshRun, failed.run_id)
        assert (
            GitCursor.from_json(one.cursor_after)
            == GitCursor("a" * 40)
            == GitCursor.from_json(two.source.cursor)
        )
        assert two.cursor_after == two.cursor_before and two.error == "fetch failed"
        assert one.finished_at is not None and two.status is RunStatus.FAILED
