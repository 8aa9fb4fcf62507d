"""Reliability: a per-document version number (recording is idempotent), and coverage of long documents.

``document_versions.seq`` numbers a document's versions 1, 2, ...; ``(document_id, seq)`` is unique, so two
writers that both append "the next version" of one document cannot both succeed: the loser re-reads and
finds the change already recorded. ``adapters.covered_fraction`` is the share of the document's text the
generator saw (1.0 when it saw all of it; None for adapters made before this revision).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("document_versions") as batch:
        batch.add_column(sa.Column("seq", sa.Integer(), nullable=True))
    # Number the existing versions of every document in id order (portable: a correlated count).
    op.execute(
        "UPDATE document_versions SET seq = (SELECT COUNT(*) FROM document_versions AS earlier "
        "WHERE earlier.document_id = document_versions.document_id AND earlier.id <= document_versions.id)"
    )
    with op.batch_alter_table("document_versions") as batch:
        batch.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint("document_versions_document_id_seq_key", ["document_id", "seq"])
    with op.batch_alter_table("adapters") as batch:
        batch.add_column(sa.Column("covered_fraction", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.drop_column("covered_fraction")
    with op.batch_alter_table("document_versions") as batch:
        batch.drop_constraint("document_versions_document_id_seq_key", type_="unique")
        batch.drop_column("seq")
