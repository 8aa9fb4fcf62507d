"""The refresh's `retire` step: a document deleted from its source loses its aliases; its adapters retire."""

from __future__ import annotations

from tasks import aliases
from tasks.catalog import queries
from tasks.catalog.db import session_scope
from tasks.catalog.models import Document
from tasks.catalog.types import AdapterState
from tasks.faults import fault_point
from tasks.runtime import runtime

LIVE = (AdapterState.CANDIDATE, AdapterState.PASSED, AdapterState.PRODUCTION)


def retire(config: str, document_id: int, flow_run_id: str | None = None) -> int:
    """Remove a deleted document's aliases and retire its adapters; returns how many were retired."""
    rt = runtime(config)
    with session_scope(rt.sessions) as session:
        doc = session.get(Document, document_id)
        adapters = queries.document_adapters(session, document_id, LIVE)
        models = {a.registered_model for a in adapters if a.registered_model}
        for model in sorted(models):
            for alias in (aliases.PRODUCTION, aliases.CANDIDATE):
                aliases.move_alias(
                    rt,
                    session,
                    model=model,
                    alias=alias,
                    version=None,
                    adapter=None,
                    actor=aliases.SYSTEM_ACTOR,
                    reason=f"document deleted: {doc.label}",
                    flow_run_id=flow_run_id,
                )
                fault_point("retire")
        for adapter in adapters:
            adapter.state = AdapterState.RETIRED
        return len(adapters)
