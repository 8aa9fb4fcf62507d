"""The refresh's `release` step, and releases in general: a manifest of every document's production version.

A release is a version of the ``<kb>-release`` registered model whose one file, ``release.json``, lists
each live document's production model version. A new release is written only when the production set
differs from the latest one; ``instill rollback --release N`` restores a manifest (``tasks.lifecycle``).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session

from tasks.aliases import default_actor
from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter
from tasks.catalog.types import AdapterState, DocumentState
from tasks.runtime import Runtime, runtime

RELEASE_SUFFIX = "-release"
MANIFEST = "release.json"


def release_model(kb: str) -> str:
    return f"{kb}{RELEASE_SUFFIX}"


def production_manifest(session: Session, rt: Runtime) -> dict:
    """Every live document's production adapter, as the catalog records it (plain rows: no ORM objects,
    so a no-op refresh of 10,000 documents does not build 40,000 of them)."""
    from sqlalchemy import select

    from tasks.catalog.models import Document, DocumentVersion, Source

    rows = session.execute(
        select(
            Source.name,
            Document.current_path,
            Document.id,
            Adapter.registered_model,
            Adapter.model_version,
            Adapter.adapter_sha256,
        )
        .join(DocumentVersion, DocumentVersion.id == Adapter.document_version_id)
        .join(Document, Document.id == DocumentVersion.document_id)
        .join(Source, Source.id == Document.source_id)
        .where(
            Adapter.state == AdapterState.PRODUCTION,
            Adapter.registered_model.is_not(None),
            Document.state != DocumentState.DELETED,
        )
        .order_by(Adapter.registered_model, Adapter.id)
    )
    documents = [
        {
            "document": f"{source}:{path}",
            "document_id": doc_id,
            "model": model,
            "version": version,
            "adapter_sha256": sha,
        }
        for source, path, doc_id, model, version, sha in rows
    ]
    return {"knowledge_base": rt.kb.name, "documents": documents}


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
    digest = _digest(manifest["documents"])
    if _released_digest(rt) == digest:  # this home saw this exact production set released: no MLflow
        return None
    latest = latest_release(rt)
    if latest is not None and latest[1]["documents"] == manifest["documents"]:
        _remember_released(rt, digest)
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
        version = rt.registry.register_file_version(release_model(rt.kb.name), folder, tags=tags)
    _remember_released(rt, digest)
    return version


def _digest(documents: list[dict]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(documents, sort_keys=True).encode()).hexdigest()


def _release_cache(rt: Runtime) -> Path:
    return rt.settings.home.resolve() / f"released-{rt.kb.name}.sha256"


def _released_digest(rt: Runtime) -> str | None:
    """The production set of the latest release as this home last saw it (a cache: the registry decides)."""
    try:
        return _release_cache(rt).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _remember_released(rt: Runtime, digest: str) -> None:
    with contextlib.suppress(OSError):  # a cache: without it the next run asks the registry
        _release_cache(rt).write_text(digest + "\n", encoding="utf-8")


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
    """Every release of the knowledge base, oldest first (`instill releases`)."""
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
