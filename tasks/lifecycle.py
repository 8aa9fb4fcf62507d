"""Promote and roll back adapters, and whole releases, through the registry's `production` alias.

Every move happens inside one catalog transaction that first locks the document's row (``FOR UPDATE`` on
PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` takes the database write lock), so two concurrent moves of the
same alias are serialised and each one's event records the version it really replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from tasks import aliases
from tasks.aliases import CANDIDATE, PRODUCTION, default_actor, model_name
from tasks.catalog import queries
from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter, Document
from tasks.catalog.types import AdapterState, DocumentState
from tasks.release import read_release, release_model, write_release
from tasks.runtime import Runtime, runtime


class LifecycleError(ValueError):
    """A promote, rollback or audit that cannot be done; the message says why."""


@dataclass(frozen=True)
class AliasMove:
    model: str
    alias: str
    from_version: str | None
    to_version: str | None


def resolve_document(session: Session, rt: Runtime, ref: str) -> Document:
    """A document from ``SOURCE:KEY`` (its current path or external key) or its registered model name."""
    if ":" in ref:
        source_name, key = ref.split(":", 1)
        source = queries.source_by_name(session, source_name)
        doc = queries.document_at(session, source.id, key) if source else None
        if doc is None and source is not None:
            doc = queries.document_by_key(session, source.id, key)
        if doc is not None:
            return doc
    else:
        # A model name ends in the document's catalog id (aliases.model_name): look it up, then check.
        tail = ref.rsplit("-", 1)[-1]
        doc = session.get(Document, int(tail)) if tail.isdigit() else None
        if doc is not None and model_name(rt.kb.name, doc.source.name, doc.id) == ref:
            return doc
    raise LifecycleError(
        f"no document {ref!r}: use SOURCE:KEY (see `instill status`) or a registered model name"
    )


def _adapter_of_version(session: Session, model: str, version: str) -> Adapter:
    adapter = queries.adapter_registered_as(session, model, version, newest=False)
    if adapter is None:
        raise LifecycleError(f"{model} has no registered version {version}")
    return adapter


def promote(
    config: str,
    ref: str,
    version: str | None = None,
    *,
    actor: str | None = None,
    reason: str | None = None,
    flow_run_id: str | None = None,
) -> AliasMove:
    """Point `production` at ``version`` (default: the `candidate`) of the document's model."""
    rt = runtime(config)
    with session_scope(rt.sessions) as session:
        doc = queries.lock_document(session, resolve_document(session, rt, ref).id)
        model = model_name(rt.kb.name, doc.source.name, doc.id)
        if doc.state is DocumentState.DELETED:
            raise LifecycleError(
                f"{doc.label} was deleted from its source: it has no adapter to promote "
                f"(restore the document and refresh, or `instill rollback --release N`)"
            )
        target = version or rt.registry.alias(model, CANDIDATE)
        if target is None:
            raise LifecycleError(f"{model} has no candidate to promote; name a version with --version")
        return _move_production(rt, session, doc, model, str(target), actor, reason or "promote", flow_run_id)


def rollback(
    config: str,
    ref: str,
    to: str | None = None,
    *,
    actor: str | None = None,
    reason: str | None = None,
    flow_run_id: str | None = None,
) -> AliasMove:
    """Point `production` back at ``to`` (default: the version production held before the current one)."""
    rt = runtime(config)
    with session_scope(rt.sessions) as session:
        doc = queries.lock_document(session, resolve_document(session, rt, ref).id)
        model = model_name(rt.kb.name, doc.source.name, doc.id)
        target = to or previous_production(session, model)
        if target is None:
            raise LifecycleError(f"{model}: no earlier production version to roll back to")
        return _move_production(
            rt, session, doc, model, str(target), actor, reason or "rollback", flow_run_id
        )


def previous_production(session: Session, model: str) -> str | None:
    """The version `production` pointed at before its current target, from the alias history."""
    events = queries.alias_events(session, model, alias=PRODUCTION)[::-1]
    if not events or events[0].to_version is None:
        return None
    current = events[0].to_version
    for event in events:
        if event.from_version not in (None, current):
            return event.from_version
    return None


def _move_production(
    rt: Runtime,
    session: Session,
    doc: Document,
    model: str,
    version: str,
    actor: str | None,
    reason: str,
    flow_run_id: str | None,
) -> AliasMove:
    adapter = _adapter_of_version(session, model, version)
    if adapter.state is AdapterState.FAILED:
        raise LifecycleError(f"{model} version {version} failed its QA gates and cannot go to production")
    if doc.state is DocumentState.DELETED:
        raise LifecycleError(f"{model}: the document was deleted; its adapters are retired")
    before = queries.last_alias_target(session, model, PRODUCTION)
    aliases.promote(
        rt, session, adapter, actor=actor or default_actor(), reason=reason, flow_run_id=flow_run_id
    )
    return AliasMove(model, PRODUCTION, before, version)


def rollback_release(
    config: str,
    release: str,
    *,
    actor: str | None = None,
    reason: str | None = None,
    flow_run_id: str | None = None,
) -> list[AliasMove]:
    """Restore every document's `production` alias to what release ``release`` recorded, in one step."""
    rt = runtime(config)
    versions = rt.registry.versions(release_model(rt.kb.name))
    if str(release) not in versions:
        raise LifecycleError(f"no release {release} of {rt.kb.name} (see `instill releases`)")
    manifest = read_release(rt, str(release))
    wanted = {entry["model"]: str(entry["version"]) for entry in manifest["documents"]}
    why = reason or f"rollback to release {release}"
    moves: list[AliasMove] = []
    with session_scope(rt.sessions) as session:
        for adapter in queries.production_adapters(session):
            if adapter.registered_model not in wanted:
                moves.append(_withdraw(rt, session, adapter, actor or default_actor(), why, flow_run_id))
        for model, version in sorted(wanted.items()):
            adapter = _adapter_of_version(session, model, version)
            doc = queries.lock_document(session, adapter.document_version.document_id)
            if doc.state is DocumentState.DELETED:
                continue  # gone from its source since that release: nothing to serve
            if queries.last_alias_target(session, model, PRODUCTION) != version:
                moves.append(_move_production(rt, session, doc, model, version, actor, why, flow_run_id))
    write_release(config, actor=actor, reason=why, flow_run_id=flow_run_id, restored_from=str(release))
    return moves


def _withdraw(
    rt: Runtime, session: Session, adapter: Adapter, actor: str, reason: str, flow_run_id: str | None
) -> AliasMove:
    """Remove `production` from an adapter the restored release does not hold; the adapter retires."""
    model = adapter.registered_model
    before = queries.last_alias_target(session, model, PRODUCTION)
    aliases.move_alias(
        rt,
        session,
        model=model,
        alias=PRODUCTION,
        version=None,
        adapter=adapter,
        actor=actor,
        reason=reason,
        flow_run_id=flow_run_id,
    )
    adapter.state = AdapterState.RETIRED
    return AliasMove(model, PRODUCTION, before, None)
