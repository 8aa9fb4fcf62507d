"""Register adapters in MLflow, move aliases, retire deleted documents; every alias move is on record.

The registry is written before the catalog: registration is idempotent by adapter sha256, and an alias
event is recorded whenever the catalog's last known target differs from the new one, so a crash between
the two is repaired by the next run without duplicates or lost events.
"""

from __future__ import annotations

import getpass
import logging
from dataclasses import dataclass

from tasks.catalog import queries
from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter, AliasEvent, Document
from tasks.catalog.types import AdapterState
from tasks.runtime import Runtime, runtime

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
PRODUCTION = "production"
SYSTEM_ACTOR = "instill-refresh"


@dataclass(frozen=True)
class RegisterOutcome:
    adapter_id: int
    model: str
    version: str
    document: str
    promoted: bool
    gated_out: bool = False  # failed its QA gates: registered for the record, no alias


def model_name(kb: str, source: str, document_id: int) -> str:
    """Stable per-document model name: from the catalog id, so a rename keeps the model."""
    return f"{kb}-{source}-{document_id}"


def register_adapter(config: str, adapter_id: int, flow_run_id: str | None = None) -> RegisterOutcome:
    """Register one adapter (idempotently); `candidate` points at it, `production` too under auto_promote."""
    from tasks.registry import AdapterRecord

    rt = runtime(config)
    with session_scope(rt.sessions) as session:
        adapter = session.get(Adapter, adapter_id)
        version, doc = adapter.document_version, adapter.document_version.document
        name = model_name(rt.kb.name, doc.source.name, doc.id)
        record = AdapterRecord(
            model=name,
            adapter_dir=rt.store.get_dir(adapter.store_uri),
            adapter_sha256=adapter.adapter_sha256,
            tags={
                "text_sha256": version.text_sha256 or "",
                "source_revision": version.source_revision,
                "generator_fingerprint": adapter.hypernet.fingerprint,
                "source": doc.source.name,
                "path": doc.current_path,
                "document_id": str(doc.id),
                "qa_verdict": _verdict(adapter),
            },
            params={
                "generator": adapter.hypernet.kind,
                "base_model": adapter.hypernet.base_model_id,
                "rank": str(adapter.rank),
                "targets": ",".join(adapter.targets),
            },
            metrics={f"qa.{q.suite}.{q.metric}": q.value for q in adapter.qa_results if q.value is not None},
            description=f"Adapters for {doc.source.name}:{doc.external_key} in knowledge base {rt.kb.name}",
        )
        document = f"{doc.source.name}:{doc.current_path}"
        failed = adapter.state is AdapterState.FAILED
    registered = rt.registry.register(record)
    promote = rt.kb.promotion.auto_promote and not failed
    with session_scope(rt.sessions) as session:
        adapter = session.get(Adapter, adapter_id)
        adapter.mlflow_run_id, adapter.registered_model = registered.run_id, registered.model
        adapter.model_version = registered.version
        if failed:  # on record in the registry with its metrics, but no alias: production stays as it is
            return RegisterOutcome(adapter_id, registered.model, registered.version, document, False, True)
        move_alias(
            rt,
            session,
            registered.model,
            CANDIDATE,
            registered.version,
            adapter,
            SYSTEM_ACTOR,
            "new adapter registered",
            flow_run_id,
        )
        if promote:
            promote_adapter(rt, session, adapter, SYSTEM_ACTOR, "auto_promote policy", flow_run_id)
    return RegisterOutcome(adapter_id, registered.model, registered.version, document, promote)


def _verdict(adapter: Adapter) -> str:
    if adapter.state is AdapterState.FAILED:
        return "failed: " + (adapter.error or "")[:200]
    return "passed" if adapter.qa_results else "not gated"


def promote_adapter(
    rt: Runtime, session, adapter: Adapter, actor: str, reason: str, flow_run_id: str | None
) -> None:
    """Move `production` to this adapter; the adapter it replaces is retired."""
    doc_id = adapter.document_version.document_id
    for old in queries.document_adapters(session, doc_id, (AdapterState.PRODUCTION,)):
        if old.id != adapter.id:
            old.state = AdapterState.RETIRED
    move_alias(
        rt,
        session,
        adapter.registered_model,
        PRODUCTION,
        adapter.model_version,
        adapter,
        actor,
        reason,
        flow_run_id,
    )
    adapter.state = AdapterState.PRODUCTION


def move_alias(
    rt: Runtime,
    session,
    model: str,
    alias: str,
    version: str | None,
    adapter: Adapter | None,
    actor: str,
    reason: str,
    flow_run_id: str | None,
) -> bool:
    """Point ``alias`` at ``version`` (None removes it) in MLflow and record the move; False if no move."""
    before = (
        rt.registry.delete_alias(model, alias)
        if version is None
        else rt.registry.set_alias(model, alias, version)
    )
    recorded = queries.last_alias_target(session, model, alias)
    if recorded == version and before == version:
        return False
    session.add(
        AliasEvent(
            registered_model=model,
            alias=alias,
            from_version=recorded if recorded is not None else before,
            to_version=version,
            adapter_id=adapter.id if adapter else None,
            actor=actor or getpass.getuser(),
            reason=reason,
            flow_run_id=flow_run_id,
        )
    )
    return True


def unregistered_adapters(config: str, source_name: str) -> list[int]:
    rt = runtime(config)
    with session_scope(rt.sessions) as session:
        source = queries.source_by_name(session, source_name)
        return queries.unregistered_adapters(session, source.id) if source else []


def documents_to_retire(config: str, source_name: str) -> list[int]:
    rt = runtime(config)
    with session_scope(rt.sessions) as session:
        source = queries.source_by_name(session, source_name)
        return queries.documents_to_retire(session, source.id) if source else []


def retire_document(config: str, document_id: int, flow_run_id: str | None = None) -> int:
    """A deleted document loses its aliases and its adapters are retired; returns how many were retired."""
    rt = runtime(config)
    live = (AdapterState.CANDIDATE, AdapterState.PASSED, AdapterState.PRODUCTION)
    with session_scope(rt.sessions) as session:
        doc = session.get(Document, document_id)
        adapters = queries.document_adapters(session, document_id, live)
        models = {a.registered_model for a in adapters if a.registered_model}
        for model in sorted(models):
            for alias in (PRODUCTION, CANDIDATE):
                move_alias(
                    rt,
                    session,
                    model,
                    alias,
                    None,
                    None,
                    SYSTEM_ACTOR,
                    f"document deleted: {doc.source.name}:{doc.current_path}",
                    flow_run_id,
                )
        for adapter in adapters:
            adapter.state = AdapterState.RETIRED
        return len(adapters)
