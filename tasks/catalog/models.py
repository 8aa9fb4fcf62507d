"""The catalog tables: lineage from each adapter back to the document revision that produced it.

sources -> documents -> document_versions -> adapters <- generators; adapters -> qa_results; alias moves in
alias_events; one refresh_runs row per refresh of a source. Every document and adapter change is a new row
(versions, events, results), so the history is never overwritten.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tasks.catalog.base import Base
from tasks.catalog.types import (
    AdapterState,
    DocumentState,
    RunStatus,
    created_at,
    intpk,
    sha256,
    updated_at,
)
from tasks.settings import DocumentKind


class Source(Base):
    __tablename__ = "sources"

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(unique=True)
    kind: Mapped[str]  # local | git | s3 | mediawiki
    uri: Mapped[str]
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The connector's typed cursor as JSON (tasks.sources.base.Cursor); moved only once every change it
    # covers is recorded.
    cursor: Mapped[str | None]
    created_at: Mapped[created_at]
    updated_at: Mapped[updated_at]

    documents: Mapped[list[Document]] = relationship(back_populates="source", order_by="Document.id")
    refresh_runs: Mapped[list[RefreshRun]] = relationship(back_populates="source", order_by="RefreshRun.id")


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("source_id", "external_key"),
        Index(None, "source_id", "current_path"),
    )

    id: Mapped[intpk]
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    # Stable for the document's life: first path (git, local), object key (S3), page id (wiki).
    external_key: Mapped[str]
    current_path: Mapped[str]  # follows renames; path, object key or page title
    title: Mapped[str | None]
    state: Mapped[DocumentState] = mapped_column(default=DocumentState.ACTIVE)
    created_at: Mapped[created_at]
    updated_at: Mapped[updated_at]

    source: Mapped[Source] = relationship(back_populates="documents")
    versions: Mapped[list[DocumentVersion]] = relationship(
        back_populates="document", order_by="DocumentVersion.id"
    )

    @property
    def label(self) -> str:
        """``SOURCE:PATH``, how the CLI, the logs and the summaries name a document."""
        return f"{self.source.name}:{self.current_path}"


def _next_seq(context) -> int:
    """The next version number of the document (``tasks.record`` sets it itself, in its transaction)."""
    document_id = context.get_current_parameters()["document_id"]
    found = context.connection.execute(
        text("SELECT COALESCE(MAX(seq), 0) + 1 FROM document_versions WHERE document_id = :d"),
        {"d": document_id},
    )
    return int(found.scalar_one())


class DocumentVersion(Base):
    __tablename__ = "document_versions"
    # Two writers appending "the next version" of one document cannot both succeed (tasks/record.py).
    __table_args__ = (UniqueConstraint("document_id", "seq"),)

    id: Mapped[intpk]
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id"), index=True)
    seq: Mapped[int] = mapped_column(default=_next_seq)  # 1, 2, ... per document
    source_revision: Mapped[str]  # blob id, object version id / checksum, wiki revid, content sha256
    raw_sha256: Mapped[sha256 | None]  # None when the bytes could not be fetched (refused, too large)
    # Half of an adapter's cache key (with the generator fingerprint), hence the index.
    text_sha256: Mapped[sha256 | None] = mapped_column(index=True)
    parser: Mapped[str | None]
    parser_version: Mapped[str | None]
    tokens: Mapped[int | None]
    change_kind: Mapped[str]  # added | modified | renamed | deleted (tasks.sources.base.ChangeKind)
    path: Mapped[str]  # the path or title at this version
    # knowledge or instruction (front matter, or the source's `content`): picks generator and gate.
    kind: Mapped[DocumentKind] = mapped_column(
        default=DocumentKind.KNOWLEDGE, server_default=DocumentKind.KNOWLEDGE.value
    )
    raw_uri: Mapped[str | None]
    text_uri: Mapped[str | None]
    error: Mapped[str | None]  # why this version failed to fetch or parse
    flow_run_id: Mapped[str | None]
    created_at: Mapped[created_at]

    document: Mapped[Document] = relationship(back_populates="versions")
    adapters: Mapped[list[Adapter]] = relationship(back_populates="document_version", order_by="Adapter.id")


class Generator(Base):
    """One adapter generator (cd, hypernet, hypernet+cd), identified by its fingerprint (weights + base
    model + config)."""

    __tablename__ = "generators"

    id: Mapped[intpk]
    name: Mapped[str]
    kind: Mapped[str]  # cd | hypernet | hypernet+cd
    fingerprint: Mapped[sha256] = mapped_column(unique=True)
    base_model_id: Mapped[str]
    base_model_revision: Mapped[str | None]
    base_model_sha256: Mapped[sha256]
    checkpoint_sha256: Mapped[sha256 | None]  # None for per-document distillation, which has no checkpoint
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[created_at]

    adapters: Mapped[list[Adapter]] = relationship(back_populates="generator", order_by="Adapter.id")


class Adapter(Base):
    __tablename__ = "adapters"
    __table_args__ = (
        Index(None, "document_version_id", "generator_id"),
        Index(None, "registered_model", "model_version"),  # audit looks adapters up by NAME@VERSION
    )

    id: Mapped[intpk]
    document_version_id: Mapped[int] = mapped_column(ForeignKey("document_versions.id"))
    generator_id: Mapped[int] = mapped_column(ForeignKey("generators.id"), index=True)
    adapter_sha256: Mapped[sha256] = mapped_column(index=True)
    store_uri: Mapped[str]
    rank: Mapped[int]
    targets: Mapped[list[str]]  # target module names, e.g. ["down_proj"]
    kind: Mapped[DocumentKind] = mapped_column(  # its document version's kind
        default=DocumentKind.KNOWLEDGE, server_default=DocumentKind.KNOWLEDGE.value
    )
    mlflow_run_id: Mapped[str | None]
    registered_model: Mapped[str | None]
    model_version: Mapped[str | None]
    state: Mapped[AdapterState] = mapped_column(default=AdapterState.CANDIDATE)
    flow_run_id: Mapped[str | None]
    error: Mapped[str | None]
    # Share of the document's text the generator saw: below 1.0 the document was cut to its window.
    covered_fraction: Mapped[float | None]
    created_at: Mapped[created_at]
    updated_at: Mapped[updated_at]

    document_version: Mapped[DocumentVersion] = relationship(back_populates="adapters")
    generator: Mapped[Generator] = relationship(back_populates="adapters")
    qa_results: Mapped[list[QAResult]] = relationship(back_populates="adapter", order_by="QAResult.id")


class QAResult(Base):
    __tablename__ = "qa_results"

    id: Mapped[intpk]
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), index=True)
    suite: Mapped[str]  # knowledge | specificity | preservation | regression
    suite_version: Mapped[str]
    metric: Mapped[str]
    value: Mapped[float | None]  # None when the metric could not be computed
    threshold: Mapped[float | None]
    passed: Mapped[bool]
    detail: Mapped[dict[str, Any] | None]
    created_at: Mapped[created_at]

    adapter: Mapped[Adapter] = relationship(back_populates="qa_results")


class AliasEvent(Base):
    """One move of a registry alias; MLflow keeps no history of these."""

    __tablename__ = "alias_events"
    __table_args__ = (Index(None, "registered_model", "alias"),)

    id: Mapped[intpk]
    registered_model: Mapped[str]
    alias: Mapped[str]
    from_version: Mapped[str | None]  # None when the alias is first set
    to_version: Mapped[str | None]  # None when the alias is removed
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"), index=True)
    actor: Mapped[str]
    reason: Mapped[str | None]
    flow_run_id: Mapped[str | None]
    created_at: Mapped[created_at]

    adapter: Mapped[Adapter | None] = relationship()


class RefreshRun(Base):
    __tablename__ = "refresh_runs"

    id: Mapped[intpk]
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"), index=True)
    cursor_before: Mapped[str | None]
    cursor_after: Mapped[str | None]
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)  # changed, generated, passed, failed, ...
    status: Mapped[RunStatus] = mapped_column(default=RunStatus.RUNNING)
    flow_run_id: Mapped[str | None]
    error: Mapped[str | None]
    started_at: Mapped[created_at]
    finished_at: Mapped[datetime | None]

    source: Mapped[Source] = relationship(back_populates="refresh_runs")
