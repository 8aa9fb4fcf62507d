"""Initial catalog: sources, documents and their versions, hypernets, adapters, QA, alias events, runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("CURRENT_TIMESTAMP")
# States are stored by value as plain text with no CHECK, so that a new state needs no migration.
STATE = sa.String(32)


def timestamp(name: str, *, default: bool = True) -> sa.Column:
    if default:
        return sa.Column(name, sa.DateTime(timezone=True), server_default=NOW, nullable=False)
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("uri", sa.String(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("cursor", sa.String(), nullable=True),
        timestamp("created_at"),
        timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("sources_pkey")),
        sa.UniqueConstraint("name", name=op.f("sources_name_key")),
    )
    op.create_table(
        "hypernets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("base_model_id", sa.String(), nullable=False),
        sa.Column("base_model_revision", sa.String(), nullable=True),
        sa.Column("base_model_sha256", sa.String(64), nullable=False),
        sa.Column("checkpoint_sha256", sa.String(64), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("hypernets_pkey")),
        sa.UniqueConstraint("fingerprint", name=op.f("hypernets_fingerprint_key")),
    )
    op.create_table(
        "documents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("external_key", sa.String(), nullable=False),
        sa.Column("current_path", sa.String(), nullable=False),
        sa.Column("title", sa.String(), nullable=True),
        sa.Column("state", STATE, nullable=False),
        timestamp("created_at"),
        timestamp("updated_at"),
        sa.ForeignKeyConstraint(["source_id"], ["sources.id"], name=op.f("documents_source_id_fkey")),
        sa.PrimaryKeyConstraint("id", name=op.f("documents_pkey")),
        sa.UniqueConstraint("source_id", "external_key", name=op.f("documents_source_id_external_key_key")),
    )
    op.create_index(op.f("documents_source_id_current_path_idx"), "documents", ["source_id", "current_path"])
    op.create_table(
        "refresh_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("cursor_before", sa.String(), nullable=True),
        sa.Column("cursor_after", sa.String(), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("status", STATE, nullable=False),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        timestamp("started_at"),
        timestamp("finished_at", default=False),
        sa.ForeignKeyConstraint(["source_id"], ["sources.id"], name=op.f("refresh_runs_source_id_fkey")),
        sa.PrimaryKeyConstraint("id", name=op.f("refresh_runs_pkey")),
    )
    op.create_index(op.f("refresh_runs_source_id_idx"), "refresh_runs", ["source_id"])
    op.create_table(
        "document_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("document_id", sa.Integer(), nullable=False),
        sa.Column("source_revision", sa.String(), nullable=False),
        sa.Column("raw_sha256", sa.String(64), nullable=True),
        sa.Column("text_sha256", sa.String(64), nullable=True),
        sa.Column("parser", sa.String(), nullable=True),
        sa.Column("parser_version", sa.String(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=True),
        sa.Column("change_kind", sa.String(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("raw_uri", sa.String(), nullable=True),
        sa.Column("text_uri", sa.String(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["document_id"], ["documents.id"], name=op.f("document_versions_document_id_fkey")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("document_versions_pkey")),
    )
    op.create_index(op.f("document_versions_document_id_idx"), "document_versions", ["document_id"])
    op.create_index(op.f("document_versions_text_sha256_idx"), "document_versions", ["text_sha256"])
    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("document_version_id", sa.Integer(), nullable=False),
        sa.Column("hypernet_id", sa.Integer(), nullable=False),
        sa.Column("adapter_sha256", sa.String(64), nullable=False),
        sa.Column("store_uri", sa.String(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("mlflow_run_id", sa.String(), nullable=True),
        sa.Column("registered_model", sa.String(), nullable=True),
        sa.Column("model_version", sa.String(), nullable=True),
        sa.Column("state", STATE, nullable=False),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        timestamp("created_at"),
        timestamp("updated_at"),
        sa.ForeignKeyConstraint(
            ["document_version_id"], ["document_versions.id"], name=op.f("adapters_document_version_id_fkey")
        ),
        sa.ForeignKeyConstraint(["hypernet_id"], ["hypernets.id"], name=op.f("adapters_hypernet_id_fkey")),
        sa.PrimaryKeyConstraint("id", name=op.f("adapters_pkey")),
    )
    op.create_index(op.f("adapters_adapter_sha256_idx"), "adapters", ["adapter_sha256"])
    op.create_index(
        op.f("adapters_document_version_id_hypernet_id_idx"),
        "adapters",
        ["document_version_id", "hypernet_id"],
    )
    op.create_index(op.f("adapters_hypernet_id_idx"), "adapters", ["hypernet_id"])
    op.create_index(
        op.f("adapters_registered_model_model_version_idx"), "adapters", ["registered_model", "model_version"]
    )
    op.create_table(
        "qa_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("suite", sa.String(), nullable=False),
        sa.Column("suite_version", sa.String(), nullable=False),
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        timestamp("created_at"),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], name=op.f("qa_results_adapter_id_fkey")),
        sa.PrimaryKeyConstraint("id", name=op.f("qa_results_pkey")),
    )
    op.create_index(op.f("qa_results_adapter_id_idx"), "qa_results", ["adapter_id"])
    op.create_table(
        "alias_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("registered_model", sa.String(), nullable=False),
        sa.Column("alias", sa.String(), nullable=False),
        sa.Column("from_version", sa.String(), nullable=True),
        sa.Column("to_version", sa.String(), nullable=True),
        sa.Column("adapter_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        timestamp("created_at"),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], name=op.f("alias_events_adapter_id_fkey")),
        sa.PrimaryKeyConstraint("id", name=op.f("alias_events_pkey")),
    )
    op.create_index(op.f("alias_events_adapter_id_idx"), "alias_events", ["adapter_id"])
    op.create_index(
        op.f("alias_events_registered_model_alias_idx"), "alias_events", ["registered_model", "alias"]
    )


def downgrade() -> None:
    # Dropping a table drops its indexes too.
    for table in (
        "alias_events",
        "qa_results",
        "adapters",
        "document_versions",
        "refresh_runs",
        "documents",
        "hypernets",
        "sources",
    ):
        op.drop_table(table)
