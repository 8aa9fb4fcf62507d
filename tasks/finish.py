"""The refresh's `finish` step: close a source's refresh run, moving its cursor only when that is safe.

The cursor moves when every change it covers was recorded (the run succeeded, or only bad input failed);
a transient failure keeps it where it was, so the next run fetches those changes again.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tasks.catalog.db import session_scope
from tasks.catalog.models import RefreshRun
from tasks.catalog.types import RunStatus
from tasks.runtime import runtime
from tasks.sources.base import Cursor, dump_cursor


def finish(
    config: str,
    run_id: int,
    status: RunStatus,
    cursor: Cursor | None,
    counts: dict,
    error: str | None = None,
) -> None:
    """Close a refresh run; the source's cursor moves only when every change it covers was recorded."""
    rt = runtime(config)
    with session_scope(rt.sessions) as session:
        run = session.get(RefreshRun, run_id)
        run.status, run.counts, run.error = status, counts, error
        run.finished_at = datetime.now(UTC)
        if status in (RunStatus.SUCCEEDED, RunStatus.PARTIAL):
            run.source.cursor = dump_cursor(cursor)
            run.cursor_after = run.source.cursor
        else:
            run.cursor_after = run.cursor_before
