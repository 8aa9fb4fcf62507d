"""Detect a source's changes, then record each: fetch, parse, store, one catalog transaction per document.

A document whose bytes cannot be parsed is bad input: its version is recorded with the reason and the
run goes on. A fetch that fails (server, disk) is transient: nothing is recorded, so the source's cursor
stays put and the next run tries again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tasks.catalog import queries
from tasks.catalog.db import session_scope
from tasks.catalog.models import Document, DocumentVersion, RefreshRun
from tasks.catalog.models import Source as SourceRow
from tasks.catalog.types import DocumentState, RunStatus
from tasks.runtime import Runtime, runtime
from tasks.sources import build_source, document_filename, source_uri
from tasks.sources.base import Change, ChangeKind, DocumentFetchError

log = logging.getLogger(__name__)


@dataclass
class SourcePlan:
    source: str
    run_id: int | None
    changes: list[Change] = field(default_factory=list)
    cursor: str | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class ChangeOutcome:
    change: Change
    document_id: int | None
    version_id: int | None
    error: str | None = None
    transient: bool = False  # a retry may succeed: keep the cursor where it was


def plan_source(config: str, source_name: str, flow_run_id: str | None = None) -> SourcePlan:
    """Open a refresh run for one source and ask its connector what changed since the stored cursor."""
    rt = runtime(config)
    cfg = next(s for s in rt.kb.sources if s.name == source_name)
    with session_scope(rt.sessions) as session:
        row = queries.source_by_name(session, cfg.name)
        if row is None:
            row = SourceRow(name=cfg.name, kind=cfg.kind, uri=source_uri(cfg), config={})
            session.add(row)
        row.kind, row.uri = cfg.kind, source_uri(cfg)
        row.config = cfg.model_dump(mode="json", exclude={"name", "kind"})
        session.flush()
        run = RefreshRun(source_id=row.id, cursor_before=row.cursor, flow_run_id=flow_run_id, counts={})
        session.add(run)
        session.flush()
        run_id, cursor = run.id, row.cursor
        known = queries.known_documents(session, row.id)
    try:
        changeset = build_source(cfg, rt.settings).changes(cursor, known)
    except Exception as exc:  # a whole source failing must not stop the other sources
        reason = f"{type(exc).__name__}: {exc}" if not str(exc).startswith(cfg.name) else str(exc)
        finish_run(config, run_id, RunStatus.FAILED, None, {}, error=reason)
        return SourcePlan(cfg.name, run_id, error=reason)
    for warning in changeset.warnings:
        log.warning("%s", warning)
    changes = [c for c in changeset.changes if not _already_recorded(c, known)]
    return SourcePlan(cfg.name, run_id, changes, changeset.cursor, changeset.warnings)


def _already_recorded(change: Change, known: dict) -> bool:
    """True for a change the catalog already holds (a rerun over a range whose cursor did not move)."""
    if change.kind is ChangeKind.DELETED:
        return change.key not in known
    current = known.get(change.key)
    if change.kind is ChangeKind.RENAMED and change.old_key in known:
        return False
    return current is not None and current.revision == change.revision


def record_change(
    config: str, source_name: str, change: Change, flow_run_id: str | None = None
) -> ChangeOutcome:
    """Fetch, parse and store one changed document and record it; a deletion only marks the document."""
    rt = runtime(config)
    with session_scope(rt.sessions) as session:
        source = queries.source_by_name(session, source_name)
        assert source is not None, "plan_source creates the source row first"
        if change.kind is ChangeKind.DELETED:
            doc = queries.document_at(session, source.id, change.key)
            if doc is None or doc.state is DocumentState.DELETED:
                return ChangeOutcome(change, doc.id if doc else None, None)
            doc.state = DocumentState.DELETED
            return ChangeOutcome(change, doc.id, None)
        doc = _document_for(session, source.id, change, create=False)
        previous = queries.latest_version(session, doc.id) if doc else None
        if change.kind is ChangeKind.RENAMED and previous and previous.source_revision == change.revision:
            # Same bytes under a new path: re-point lineage, keep the text and its adapter.
            version = _copy_version(previous, change, flow_run_id)
            doc.current_path = change.key
            doc.title = change.title or doc.title
            return _add_version(session, doc, version, change)
    try:
        data = build_source(_source_cfg(rt, source_name), rt.settings).fetch(change)
    except Exception as exc:
        if isinstance(exc, DocumentFetchError) and exc.permanent:  # over a size limit: a retry cannot help
            return _record_refused(rt, source_name, change, f"cannot fetch: {exc}", flow_run_id)
        return ChangeOutcome(change, None, None, error=f"cannot fetch: {exc}", transient=True)
    return _record_fetched(rt, source_name, change, data, flow_run_id)


def _record_refused(
    rt: Runtime, source_name: str, change: Change, error: str, flow_run_id: str | None
) -> ChangeOutcome:
    """Record a version that cannot be fetched, like a parse failure; its bytes are unknown (no hash)."""
    version = DocumentVersion(
        source_revision=change.revision or "",
        raw_sha256=None,
        change_kind=change.kind.value,
        path=change.title or change.key,
        error=error,
        flow_run_id=flow_run_id,
    )
    return _record_version(rt, source_name, change, version)


def _record_fetched(
    rt: Runtime, source_name: str, change: Change, data: bytes, flow_run_id: str | None
) -> ChangeOutcome:
    from tasks.parse import ParseError, parse_document, parser_version

    raw = rt.store.put_bytes(data, "raw")
    version = DocumentVersion(
        source_revision=change.revision or raw.sha256,
        raw_sha256=raw.sha256,
        change_kind=change.kind.value,
        path=change.title or change.key,
        raw_uri=raw.uri,
        flow_run_id=flow_run_id,
    )
    filename = document_filename(_source_cfg(rt, source_name), change)
    try:
        parsed = parse_document(data, filename)
    except ParseError as exc:
        version.error, version.parser_version = str(exc), parser_version(filename)
    else:
        text = rt.store.put_bytes(parsed.text.encode("utf-8"), "text")
        version.text_sha256, version.text_uri = parsed.text_sha256, text.uri
        version.parser, version.parser_version = parsed.parser, parsed.parser_version
    return _record_version(rt, source_name, change, version)


def _record_version(rt: Runtime, source_name: str, change: Change, version: DocumentVersion) -> ChangeOutcome:
    error = version.error
    with session_scope(rt.sessions) as session:
        source = queries.source_by_name(session, source_name)
        doc = _document_for(session, source.id, change)
        doc.current_path = change.key
        if change.title:
            doc.title = change.title
        had_good_version = any(v.text_sha256 for v in doc.versions) if doc.id else False
        if error:
            # Bad input: keep the old adapter live when there is one, else the document is failed.
            doc.state = DocumentState.ACTIVE if had_good_version else DocumentState.FAILED
        else:
            doc.state = DocumentState.ACTIVE
        outcome = _add_version(session, doc, version, change)
    return ChangeOutcome(change, outcome.document_id, outcome.version_id, error=error)


def _document_for(session, source_id: int, change: Change, create: bool = True) -> Document | None:
    """The document a change belongs to: by its old path for renames, else by path; new if unknown."""
    doc = None
    if change.kind is ChangeKind.RENAMED and change.old_key:
        doc = queries.document_at(session, source_id, change.old_key)
    if doc is None:
        doc = queries.document_at(session, source_id, change.key)
    if doc is None and create:
        doc = Document(
            source_id=source_id, external_key=change.key, current_path=change.key, title=change.title
        )
        session.add(doc)
    return doc


def _copy_version(previous: DocumentVersion, change: Change, flow_run_id: str | None) -> DocumentVersion:
    return DocumentVersion(
        source_revision=previous.source_revision,
        raw_sha256=previous.raw_sha256,
        text_sha256=previous.text_sha256,
        parser=previous.parser,
        parser_version=previous.parser_version,
        tokens=previous.tokens,
        change_kind=change.kind.value,
        path=change.title or change.key,
        raw_uri=previous.raw_uri,
        text_uri=previous.text_uri,
        error=previous.error,
        flow_run_id=flow_run_id,
    )


def _add_version(session, doc: Document, version: DocumentVersion, change: Change) -> ChangeOutcome:
    doc.versions.append(version)
    session.flush()
    return ChangeOutcome(change, doc.id, version.id, error=version.error)


def _source_cfg(rt: Runtime, name: str):
    return next(s for s in rt.kb.sources if s.name == name)


def finish_run(
    config: str,
    run_id: int,
    status: RunStatus,
    cursor: str | None,
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
            run.source.cursor = cursor
            run.cursor_after = cursor
        else:
            run.cursor_after = run.cursor_before
