"""Promote and roll back adapters, and whole weekly releases, through the registry's `production` alias.

Every move happens inside one catalog transaction that first locks the document's row (``FOR UPDATE`` on
PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` takes the database write lock), so two concurrent moves of the
same alias are serialised and each one's event records the version it really replaced.
"""

from __future__ import annotations

import getpass
import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tasks.catalog import queries
from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter, AliasEvent, Document
from tasks.catalog.types import AdapterState, DocumentState
from tasks.publish import PRODUCTION, model_name, move_alias
from tasks.runtime import Runtime, runtime

RELEASE_SUFFIX = "-release"
MANIFEST = "release.json"


class LifecycleError(ValueError):
    """A promote or rollback that cannot be done; the message says why."""


@dataclass(frozen=True)
class AliasMove:
    model: str
    alias: str
    from_version: str | None
    to_version: str | None


def default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def resolve_document(session: Session, rt: Runtime, ref: str) -> Document:
    """A document from ``SOURCE:KEY`` (its current path or external key) or its registered model name."""
    if ":" in ref:
        source_name, key = ref.split(":", 1)
        source = queries.source_by_name(session, source_name)
        doc = queries.document_at(session, source.id, key) if source else None
        if doc is None and source is not None:
            doc = session.scalar(
                select(Document).where(Document.source_id == source.id, Document.external_key == key)
            )
        if doc is not None:
            return doc
    else:
        # A model name ends in the document's catalog id (publish.model_name): look it up, then check.
        tail = ref.rsplit("-", 1)[-1]
        doc = session.get(Document, int(tail)) if tail.isdigit() else None
        if doc is not None and model_name(rt.kb.name, doc.source.name, doc.id) == ref:
            return doc
    raise LifecycleError(
        f"no document {ref!r}: use SOURCE:KEY (see `instill status`) or a registered model name"
    )


def _lock(session: Session, doc: Document) -> Document:
    return session.scalar(select(Document).where(Document.id == doc.id).with_for_update())


def _adapter_of_version(session: Session, model: str, version: str) -> Adapter:
    adapter = session.scalar(
        select(Adapter).where(Adapter.registered_model == model, Adapter.model_version == str(version))
    )
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
        doc = _lock(session, resolve_document(session, rt, ref))
        model = model_name(rt.kb.name, doc.source.name, doc.id)
        target = version or rt.registry.alias(model, "candidate")
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
        doc = _lock(session, resolve_document(session, rt, ref))
        model = model_name(rt.kb.name, doc.source.name, doc.id)
        target = to or previous_production(session, model)
        if target is None:
            raise LifecycleError(f"{model}: no earlier production version to roll back to")
        return _move_production(
            rt, session, doc, model, str(target), actor, reason or "rollback", flow_run_id
        )


def previous_production(session: Session, model: str) -> str | None:
    """The version `production` pointed at before its current target, from the alias history."""
    events = session.scalars(
        select(AliasEvent)
        .where(AliasEvent.registered_model == model, AliasEvent.alias == PRODUCTION)
        .order_by(AliasEvent.id.desc())
    ).all()
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
    for other in queries.document_adapters(session, doc.id, (AdapterState.PRODUCTION,)):
        if other.id != adapter.id:
            other.state = AdapterState.RETIRED
    move_alias(
        rt, session, model, PRODUCTION, version, adapter, actor or default_actor(), reason, flow_run_id
    )
    adapter.state = AdapterState.PRODUCTION
    return AliasMove(model, PRODUCTION, before, version)


# ---- weekly releases: a manifest of every document's production version ------------------------------------


def release_model(kb: str) -> str:
    return f"{kb}{RELEASE_SUFFIX}"


def production_manifest(session: Session, rt: Runtime) -> dict:
    """Every live document's production adapter, as the catalog records it."""
    rows = session.scalars(
        select(Adapter).where(Adapter.state == AdapterState.PRODUCTION).order_by(Adapter.registered_model)
    ).all()
    documents = [
        _manifest_entry(a)
        for a in rows
        if a.registered_model and a.document_version.document.state is not DocumentState.DELETED
    ]
    return {"knowledge_base": rt.kb.name, "documents": documents}


def _manifest_entry(adapter: Adapter) -> dict:
    doc = adapter.document_version.document
    return {
        "document": f"{doc.source.name}:{doc.current_path}",
        "document_id": doc.id,
        "model": adapter.registered_model,
        "version": adapter.model_version,
        "adapter_sha256": adapter.adapter_sha256,
    }


def write_release(
    config: str,
    *,
    actor: str | None = None,
    reason: str = "refresh",
    flow_run_id: str | None = None,
    restored_from: str | None = None,
) -> str | None:
    """Register the current production set as a new release version, unless it equals the latest release."""
    rt = runtime(config)
    with session_scope(rt.sessions) as session:
        manifest = production_manifest(session, rt)
    latest = latest_release(rt)
    if latest is not None and latest[1]["documents"] == manifest["documents"]:
        return None
    manifest |= {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "actor": actor or default_actor(),
        "reason": reason,
        "flow_run_id": flow_run_id,
        "restored_from": restored_from,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / MANIFEST).write_text(
            json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        tags = {"reason": reason, "documents": str(len(manifest["documents"]))}
        if restored_from:
            tags["restored_from"] = restored_from
        return rt.registry.register_file_version(release_model(rt.kb.name), folder, tags=tags)


def latest_release(rt: Runtime) -> tuple[str, dict] | None:
    versions = rt.registry.versions(release_model(rt.kb.name))
    if not versions:
        return None
    latest = max(versions, key=int)
    return latest, read_release(rt, latest)


def read_release(rt: Runtime, version: str) -> dict:
    folder = rt.registry.download_version(release_model(rt.kb.name), version)
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


def list_releases(config: str) -> list[dict]:
    rt = runtime(config)
    out = []
    for version in sorted(rt.registry.versions(release_model(rt.kb.name)), key=int):
        manifest = read_release(rt, version)
        out.append(
            {
                "release": version,
                "created_at": manifest.get("created_at"),
                "reason": manifest.get("reason"),
                "actor": manifest.get("actor"),
                "documents": len(manifest["documents"]),
                "restored_from": manifest.get("restored_from"),
            }
        )
    return out


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
        live = session.scalars(select(Adapter).where(Adapter.state == AdapterState.PRODUCTION)).all()
        for adapter in live:
            if adapter.registered_model not in wanted:
                before = queries.last_alias_target(session, adapter.registered_model, PRODUCTION)
                move_alias(
                    rt,
                    session,
                    adapter.registered_model,
                    PRODUCTION,
                    None,
                    adapter,
                    actor or default_actor(),
                    why,
                    flow_run_id,
                )
                adapter.state = AdapterState.RETIRED
                moves.append(AliasMove(adapter.registered_model, PRODUCTION, before, None))
        for model, version in sorted(wanted.items()):
            adapter = _adapter_of_version(session, model, version)
            doc = _lock(session, adapter.document_version.document)
            if doc.state is DocumentState.DELETED:
                continue  # gone from its source since that release: nothing to serve
            if queries.last_alias_target(session, model, PRODUCTION) != version:
                moves.append(_move_production(rt, session, doc, model, version, actor, why, flow_run_id))
    write_release(config, actor=actor, reason=why, flow_run_id=flow_run_id, restored_from=str(release))
    return moves
