"""The SQL catalog: lineage from every adapter back to the document revision that produced it."""

from tasks.catalog.base import Base
from tasks.catalog.db import (
    alembic_config,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    normalise_url,
    session_factory,
    session_scope,
    upgrade,
)
from tasks.catalog.models import (
    Adapter,
    AliasEvent,
    Document,
    DocumentVersion,
    Generator,
    QAResult,
    RefreshRun,
    Source,
)
from tasks.catalog.types import AdapterState, DocumentState, RunStatus

__all__ = [
    "Adapter",
    "AdapterState",
    "AliasEvent",
    "Base",
    "Document",
    "DocumentState",
    "DocumentVersion",
    "Generator",
    "QAResult",
    "RefreshRun",
    "RunStatus",
    "Source",
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "make_engine",
    "normalise_url",
    "session_factory",
    "session_scope",
    "upgrade",
]
