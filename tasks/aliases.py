"""The registry's vocabulary: per-document model names, the alias names, and moving an alias on record.

Every alias move goes through ``move_alias``: MLflow keeps no history of aliases, so each move is also an
``alias_events`` row (who, why, from which version, in which flow run). Promotion (``promote``) is the one
move with a side effect in the catalog: the adapter it replaces is retired.
"""

from __future__ import annotations

import getpass

from sqlalchemy.orm import Session

from tasks.catalog import queries
from tasks.catalog.models import Adapter, AliasEvent
from tasks.catalog.types import AdapterState
from tasks.runtime import Runtime

CANDIDATE = "candidate"
PRODUCTION = "production"
SYSTEM_ACTOR = "instill-refresh"  # the actor of the refresh's own moves


def model_name(kb: str, source: str, document_id: int) -> str:
    """Stable per-document model name: from the catalog id, so a rename keeps the model."""
    return f"{kb}-{source}-{document_id}"


def default_actor() -> str:
    """Who is acting when nobody says: the login name."""
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def move_alias(
    rt: Runtime,
    session: Session,
    *,
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
            actor=actor or default_actor(),
            reason=reason,
            flow_run_id=flow_run_id,
        )
    )
    return True


def promote(
    rt: Runtime, session: Session, adapter: Adapter, *, actor: str, reason: str, flow_run_id: str | None
) -> None:
    """Move `production` to this registered adapter; the production adapter it replaces is retired."""
    doc_id = adapter.document_version.document_id
    for old in queries.document_adapters(session, doc_id, (AdapterState.PRODUCTION,)):
        if old.id != adapter.id:
            old.state = AdapterState.RETIRED
    move_alias(
        rt,
        session,
        model=adapter.registered_model,
        alias=PRODUCTION,
        version=adapter.model_version,
        adapter=adapter,
        actor=actor,
        reason=reason,
        flow_run_id=flow_run_id,
    )
    adapter.state = AdapterState.PRODUCTION
