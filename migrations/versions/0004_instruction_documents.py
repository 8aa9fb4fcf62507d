"""Instruction documents: ``document_versions.kind`` and ``adapters.kind`` (knowledge | instruction).

A version's kind decides which generator and gate its adapter gets (``tasks.settings.DocumentKind``); the
adapter carries it too, so the catalog, the registry and serving tell instruction adapters apart without
a join. Existing rows are knowledge.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KIND = sa.String(32)  # enums are stored by value as plain text (migrations/versions/0001)


def upgrade() -> None:
    for table in ("document_versions", "adapters"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("kind", KIND, nullable=False, server_default="knowledge"))


def downgrade() -> None:
    for table in ("adapters", "document_versions"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("kind")
