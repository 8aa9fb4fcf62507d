"""The refresh's `register` step: register an adapter in MLflow, then point its aliases at it, on record.

The registry is written before the catalog: registration is idempotent by adapter sha256, and an alias
event is recorded whenever the catalog's last known target differs from the new one, so a crash between
the two is repaired by the next run without duplicates or lost events. The QA verdict goes on the
version (a tag) and every QA metric on its run.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks import aliases
from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter
from tasks.catalog.types import AdapterState
from tasks.faults import fault_point
from tasks.runtime import Runtime, runtime
from tasks.settings import KIND_TAG, DocumentKind


@dataclass(frozen=True)
class RegisterOutcome:
    adapter_id: int
    model: str
    version: str
    document: str
    promoted: bool
    gated_out: bool = False  # failed its QA gates: registered for the record, no alias
    kind: str = DocumentKind.KNOWLEDGE.value


def register(config: str, adapter_id: int, flow_run_id: str | None = None) -> RegisterOutcome:
    """Register one adapter (idempotently); `candidate` points at it, `production` too under auto_promote."""
    rt = runtime(config)
    with session_scope(rt.sessions) as session:
        adapter = session.get(Adapter, adapter_id)
        record = _record(rt, adapter)
        document = adapter.document_version.document.label
        failed = adapter.state is AdapterState.FAILED
        kind = adapter.kind.value
    registered = rt.registry.register(record)
    promote = rt.kb.promotion.auto_promote and not failed
    with session_scope(rt.sessions) as session:
        adapter = session.get(Adapter, adapter_id)
        adapter.mlflow_run_id, adapter.registered_model = registered.run_id, registered.model
        adapter.model_version = registered.version
        if failed:  # on record in the registry with its metrics, but no alias: production stays as it is
            return RegisterOutcome(
                adapter_id, registered.model, registered.version, document, False, True, kind
            )
        aliases.move_alias(
            rt,
            session,
            model=registered.model,
            alias=aliases.CANDIDATE,
            version=registered.version,
            adapter=adapter,
            actor=aliases.SYSTEM_ACTOR,
            reason="new adapter registered",
            flow_run_id=flow_run_id,
        )
        fault_point("register-alias")
        if promote:
            aliases.promote(
                rt,
                session,
                adapter,
                actor=aliases.SYSTEM_ACTOR,
                reason="auto_promote policy",
                flow_run_id=flow_run_id,
            )
    return RegisterOutcome(adapter_id, registered.model, registered.version, document, promote, kind=kind)


def _record(rt: Runtime, adapter: Adapter):
    """What the registry gets for one adapter: files, lineage tags, the verdict, QA metrics."""
    from tasks.registry import AdapterRecord

    version, doc = adapter.document_version, adapter.document_version.document
    return AdapterRecord(
        model=aliases.model_name(rt.kb.name, doc.source.name, doc.id),
        adapter_dir=rt.store.get_dir(adapter.store_uri),
        adapter_sha256=adapter.adapter_sha256,
        tags={
            "text_sha256": version.text_sha256 or "",
            "source_revision": version.source_revision,
            "generator_fingerprint": adapter.generator.fingerprint,
            "source": doc.source.name,
            "path": doc.current_path,
            "document_id": str(doc.id),
            "qa_verdict": _verdict(adapter),
            KIND_TAG: adapter.kind.value,  # serving applies an instruction adapter to every answer
        },
        params={
            "generator": adapter.generator.kind,
            "base_model": adapter.generator.base_model_id,
            "rank": str(adapter.rank),
            "targets": ",".join(adapter.targets),
        },
        metrics={f"qa.{q.suite}.{q.metric}": q.value for q in adapter.qa_results if q.value is not None},
        description=f"Adapters for {doc.source.name}:{doc.external_key} in knowledge base {rt.kb.name}",
    )


def _verdict(adapter: Adapter) -> str:
    if adapter.state is AdapterState.FAILED:
        return "failed: " + (adapter.error or "")[:200]
    return "passed" if adapter.qa_results else "not gated"
