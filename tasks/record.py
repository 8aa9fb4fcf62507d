"""The refresh's `record` step: fetch, parse and store one changed document, in one catalog transaction.

A document whose bytes cannot be parsed is bad input: its version is recorded with the reason and the
run goes on. A fetch that fails (server, disk) is transient: nothing is recorded, so the source's cursor
stays put and the next run tries again. A pure rename (same revision) copies the previous version under
the new path: no fetch, no parse, no regeneration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tasks.catalog import queries
from tasks.catalog.db import session_scope
from tasks.catalog.models import Document, DocumentVersion
from tasks.catalog.types import DocumentState
from tasks.faults import fault_point
from tasks.instruction import InstructionError
from tasks.runtime import Runtime, runtime
from tasks.settings import DocumentKind
from tasks.sources import build_source
from tasks.sources.base import Change, ChangeKind, DocumentFetchError, TooLargeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChangeOutcome:
    change: Change
    document_id: int | None
    version_id: int | None
    error: str | None = None
    transient: bool = False  # a retry may succeed: keep the cursor where it was


def record(config: str, source_name: str, change: Change, flow_run_id: str | None = None) -> ChangeOutcome:
    """Fetch, parse and store one changed document and record it; a deletion only marks the document.

    Idempotent: a change the catalog already holds is not recorded twice, even by two refreshes at once
    (the check is repeated inside the write transaction, and ``(document_id, seq)`` is unique: the writer
    that loses the race re-reads and finds the version the other one wrote).
    """
    from sqlalchemy.exc import IntegrityError

    try:
        return _record(config, source_name, change, flow_run_id)
    except IntegrityError:
        log.info("%s:%s was recorded concurrently; reading it back", source_name, change.key)
        return _record(config, source_name, change, flow_run_id)


def _record(config: str, source_name: str, change: Change, flow_run_id: str | None) -> ChangeOutcome:
    rt = runtime(config)
    fault_point("record")
    with session_scope(rt.sessions) as session:
        source = queries.source_by_name(session, source_name)
        assert source is not None, "detect creates the source row first"
        if change.kind is ChangeKind.DELETED:
            doc = queries.document_at(session, source.id, change.key)
            if doc is None or doc.state is DocumentState.DELETED:
                return ChangeOutcome(change, doc.id if doc else None, None)
            doc.state = DocumentState.DELETED
            return ChangeOutcome(change, doc.id, None)
        doc = _document_for(session, source.id, change, create=False)
        previous = queries.latest_version(session, doc.id) if doc else None
        if _holds(doc, previous, change):
            return ChangeOutcome(change, doc.id, previous.id, error=previous.error)
        if change.kind is ChangeKind.RENAMED and previous and previous.source_revision == change.revision:
            # Same bytes under a new path: re-point lineage, keep the text and its adapter.
            version = _copy_version(previous, change, flow_run_id)
            doc.current_path = change.key
            doc.title = change.title or doc.title
            return _add_version(session, doc, version, change)
    try:
        cfg = rt.source_config(source_name)
        connector = build_source(cfg, rt.settings)
        data = connector.fetch(change)
        if len(data) > cfg.max_bytes:  # sources that cannot tell the size before reading
            raise TooLargeError(source_name, change.key, len(data), cfg.max_bytes)
    except Exception as exc:
        if isinstance(exc, DocumentFetchError) and exc.permanent:  # over a size limit: a retry cannot help
            return _record_refused(rt, source_name, change, f"cannot fetch: {exc}", flow_run_id)
        return ChangeOutcome(change, None, None, error=f"cannot fetch: {exc}", transient=True)
    return _record_fetched(rt, source_name, change, data, connector.document_filename(change), flow_run_id)


def _holds(
    doc: Document | None, latest: DocumentVersion | None, change: Change, read: DocumentVersion | None = None
) -> bool:
    """True when the catalog already holds this change: the document is at this path and revision. A
    re-read (``change.reread``) is held only once ``read`` shows the same text, kind and error."""
    if doc is None or latest is None or change.revision is None:
        return False
    same = (
        doc.current_path == change.key
        and doc.state is not DocumentState.DELETED
        and latest.source_revision == change.revision
        and latest.path == (change.title or change.key)
    )
    if not change.reread:
        return same
    return (
        same
        and read is not None
        and (latest.text_sha256, latest.kind, latest.error) == (read.text_sha256, read.kind, read.error)
    )


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
    rt: Runtime, source_name: str, change: Change, data: bytes, filename: str, flow_run_id: str | None
) -> ChangeOutcome:
    from tasks.parse import ParseError, parser_version

    raw = rt.store.put_bytes(data, "raw")
    version = DocumentVersion(
        source_revision=change.revision or raw.sha256,
        raw_sha256=raw.sha256,
        change_kind=change.kind.value,
        path=change.title or change.key,
        raw_uri=raw.uri,
        flow_run_id=flow_run_id,
    )
    title = None
    whole = rt.source_config(source_name).content is DocumentKind.INSTRUCTION
    try:
        parsed = _parse(data, filename, whole)
    except ParseError as exc:
        version.error, version.parser_version = str(exc), parser_version(filename)
    except InstructionError as exc:  # bad input like a parse failure: recorded, the others go on
        version.error, version.kind = str(exc), DocumentKind.INSTRUCTION
    else:
        text = rt.store.put_bytes(parsed.text.encode("utf-8"), "text")
        version.text_sha256, version.text_uri = parsed.text_sha256, text.uri
        version.parser, version.parser_version = parsed.parser, parsed.parser_version
        version.kind = parsed.kind
        title = parsed.title
    return _record_version(rt, source_name, change, version, title)


@dataclass(frozen=True)
class _Parsed:
    """What a version records of its text: knowledge is the parsed document, an instruction its body."""

    kind: DocumentKind
    text: str
    text_sha256: str
    parser: str
    parser_version: str
    title: str | None


def _parse(data: bytes, filename: str, whole: bool) -> _Parsed:
    """Parse a document; an instruction (front matter, or ``whole``: its source's content) keeps its body.

    Raises ``ParseError`` for unparseable bytes, ``InstructionError`` for a malformed instruction."""
    import hashlib
    from functools import cache

    from tasks import instruction
    from tasks.parse import parse_document

    parse = cache(lambda: parse_document(data, filename))
    body = instruction.read_instruction(data, filename, lambda: parse().text, whole)
    if body is None:
        p = parse()
        return _Parsed(DocumentKind.KNOWLEDGE, p.text, p.text_sha256, p.parser, p.parser_version, p.title)
    sha = hashlib.sha256(body.encode("utf-8")).hexdigest()
    # Which declaration made it an instruction, recorded as the "parser version" of its text.
    declared = instruction.instruction_text(data, filename) is not None
    how = "front matter" if declared else "source content"
    return _Parsed(DocumentKind.INSTRUCTION, body, sha, instruction.PARSER, how, None)


def _record_version(
    rt: Runtime, source_name: str, change: Change, version: DocumentVersion, title: str | None = None
) -> ChangeOutcome:
    error = version.error
    fault_point("record-write")
    with session_scope(rt.sessions) as session:
        source = queries.source_by_name(session, source_name)
        doc = _document_for(session, source.id, change)
        if doc.id is not None:  # re-checked inside the write transaction: another writer may have won
            latest = queries.latest_version(session, doc.id)
            if _holds(doc, latest, change, version):
                return ChangeOutcome(change, doc.id, latest.id, error=latest.error)
        doc.current_path = change.key
        if change.title or title:  # the source's title (wiki), else the document's first heading
            doc.title = change.title or title
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
        kind=previous.kind,
        flow_run_id=flow_run_id,
    )


def _add_version(session, doc: Document, version: DocumentVersion, change: Change) -> ChangeOutcome:
    version.seq = max((v.seq for v in doc.versions), default=0) + 1 if doc.id is not None else 1
    doc.versions.append(version)
    session.flush()
    return ChangeOutcome(change, doc.id, version.id, error=version.error)
