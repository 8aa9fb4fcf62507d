"""The refresh's `finish` step: close a source's refresh run, moving its cursor only when that is safe.

The cursor moves when every change it covers was recorded (the run succeeded, or only bad input failed);
a transient failure keeps it where it was, so the next run fetches those changes again. The source's
``content`` setting is stored at the same moment, so a changed setting is applied to every document once.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tasks.catalog.db import session_scope
from tasks.catalog.models import RefreshRun
from tasks.catalog.types import RunStatus
from tasks.faults import fault_point
from tasks.runtime import runtime
from tasks.sources.base import Cursor, dump_cursor, redact


def close_crashed_runs(config: str, interrupted: bool = False) -> int:
    """Close the knowledge base's refresh runs left `running` by a process that died, as `crashed`.

    Called with the knowledge base's refresh lock held, so no live process owns such a run. MLflow runs
    left RUNNING are marked KILLED too when a run was closed or the previous refresh was ``interrupted``
    (only then is MLflow loaded). Returns how many refresh runs were closed.
    """
    from sqlalchemy import select

    from tasks.catalog.models import Source

    rt = runtime(config)
    names = [s.name for s in rt.kb.sources]
    with session_scope(rt.sessions) as session:
        stuck = session.scalars(
            select(RefreshRun)
            .join(Source, Source.id == RefreshRun.source_id)
            .where(RefreshRun.status == RunStatus.RUNNING, Source.name.in_(names))
        ).all()
        for run in stuck:
            run.status = RunStatus.CRASHED
            run.finished_at = datetime.now(UTC)
            run.error = "the process running it ended without closing it (killed or crashed)"
            run.cursor_after = run.cursor_before
    if stuck or interrupted:
        rt.registry.kill_running_runs()
    return len(stuck)


def finish(
    config: str,
    run_id: int,
    status: RunStatus,
    cursor: Cursor | None,
    counts: dict,
    error: str | None = None,
    flow_run_id: str | None = None,
) -> None:
    """Close a refresh run; the source's cursor moves only when every change it covers was recorded."""
    rt = runtime(config)
    fault_point("finish")
    with session_scope(rt.sessions) as session:
        run = session.get(RefreshRun, run_id)
        run.status, run.counts, run.error = status, counts, redact(error) if error else None
        run.flow_run_id = run.flow_run_id or flow_run_id
        run.finished_at = datetime.now(UTC)
        if status in (RunStatus.SUCCEEDED, RunStatus.PARTIAL):
            run.source.cursor = dump_cursor(cursor)
            run.cursor_after = run.source.cursor
            # the documents are now read as the source's ``content`` says (``tasks.detect`` compares)
            content = rt.source_config(run.source.name).content.value
            run.source.config = {**(run.source.config or {}), "content": content}
        else:
            run.cursor_after = run.cursor_before
