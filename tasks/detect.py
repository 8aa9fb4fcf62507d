"""The refresh's `detect` step: open a refresh run for one source and ask its connector what changed.

Changes are relative to the source's stored cursor and to the documents the catalog holds; changes the
catalog already holds (a rerun over a range whose cursor did not move) are dropped. When the source's
``content`` setting changed since the last run, every present document is read again (``Change.reread``),
so its kind follows the new setting even where its bytes did not change. A source that fails
as a whole is reported in the plan (``error``); the flow closes its run as failed.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from tasks.catalog import queries
from tasks.catalog.db import session_scope
from tasks.catalog.models import RefreshRun
from tasks.catalog.models import Source as SourceRow
from tasks.faults import fault_point
from tasks.runtime import runtime
from tasks.settings import DocumentKind
from tasks.sources import build_source
from tasks.sources.base import Change, ChangeKind, Cursor, KnownDocument, load_cursor, redact

log = logging.getLogger(__name__)


@dataclass
class SourcePlan:
    source: str
    run_id: int | None
    changes: list[Change] = field(default_factory=list)
    cursor: Cursor | None = None  # where the source will be once every change is recorded
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def detect(config: str, source_name: str, flow_run_id: str | None = None) -> SourcePlan:
    """Open a refresh run for one source and ask its connector what changed since the stored cursor."""
    rt = runtime(config)
    cfg = rt.source_config(source_name)
    with session_scope(rt.sessions) as session:
        row = queries.source_by_name(session, cfg.name)
        # what the catalog's documents were read as: ``finish`` stores it once a run recorded its changes
        # (a source recorded before ``content`` existed held knowledge)
        was = (row.config or {}).get("content", DocumentKind.KNOWLEDGE.value) if row else cfg.content.value
        if row is None:
            row = SourceRow(name=cfg.name, kind=cfg.kind, uri=cfg.uri, config={})
            session.add(row)
        row.kind, row.uri = cfg.kind, cfg.uri
        row.config = redact_values(cfg.model_dump(mode="json", exclude={"name", "kind"})) | {"content": was}
        session.flush()
        run = RefreshRun(source_id=row.id, cursor_before=row.cursor, flow_run_id=flow_run_id, counts={})
        session.add(run)
        session.flush()
        run_id, stored = run.id, row.cursor
        known = queries.known_documents(session, row.id)
    fault_point("detect")
    try:
        connector = build_source(cfg, rt.settings)
        warnings: list[str] = []
        changeset = connector.changes(load_cursor(connector, stored, warnings), known)
        warnings += changeset.warnings
        changes = [c for c in changeset.changes if not _already_recorded(c, known)]
        if was != cfg.content.value:
            rereads = _rereads(connector, changes)
            warnings.append(
                f"{cfg.name}: content changed from {was} to {cfg.content.value}: "
                f"reading its {len(rereads)} unchanged document(s) again"
            )
            changes += rereads
    except Exception as exc:  # a whole source failing must not stop the other sources
        reason = f"{type(exc).__name__}: {exc}" if not str(exc).startswith(cfg.name) else str(exc)
        return SourcePlan(cfg.name, run_id, error=redact(reason))
    for warning in warnings:
        log.warning("%s", warning)
    return SourcePlan(cfg.name, run_id, changes, changeset.cursor, warnings)


def _rereads(connector, changes: list[Change]) -> list[Change]:
    """Every present document the changes do not cover, as a change to read again: a full listing
    (no cursor, nothing known), so unchanged documents are in it."""
    covered = {c.key for c in changes} | {c.old_key for c in changes if c.old_key}
    listed = connector.changes(None, {}).changes
    return [
        dataclasses.replace(c, reread=True)
        for c in listed
        if c.kind is not ChangeKind.DELETED and c.key not in covered
    ]


def redact_values(value):
    """A config copy with the credentials inside every URL removed (``sources.config``)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_values(v) for v in value]
    return value


def _already_recorded(change: Change, known: dict[str, KnownDocument]) -> bool:
    """True for a change the catalog already holds (a rerun over a range whose cursor did not move)."""
    if change.kind is ChangeKind.DELETED:
        return change.key not in known
    current = known.get(change.key)
    if change.kind is ChangeKind.RENAMED and change.old_key in known:
        return False
    return current is not None and current.revision == change.revision
