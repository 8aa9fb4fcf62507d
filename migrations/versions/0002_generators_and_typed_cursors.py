"""Rename `hypernets` to `generators` (it holds every generator) and store cursors as typed JSON.

The table and its foreign key column (`adapters.hypernet_id` -> `generator_id`) are renamed by copying
the rows into a new table, which works the same on SQLite and PostgreSQL. Cursors: a git cursor (a commit
id) becomes {"commit": ...}; a MediaWiki cursor "<timestamp>|<rcid>" becomes {"rcid": ..., "timestamp":
...}; cursors that do not parse are left as they were (the connector then warns and lists everything).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import json
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENERATOR_COLUMNS = (
    "id, name, kind, fingerprint, base_model_id, base_model_revision, base_model_sha256, checkpoint_sha256, "
    "config, metrics, created_at"
)


def generator_table(name: str) -> None:
    op.create_table(
        name,
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
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=f"{name}_pkey"),
        sa.UniqueConstraint("fingerprint", name=f"{name}_fingerprint_key"),
    )


def move_generators(old: str, new: str) -> None:
    """Copy the generator rows from ``old`` into a new table ``new`` and point adapters at it."""
    generator_table(new)
    op.execute(f"INSERT INTO {new} ({GENERATOR_COLUMNS}) SELECT {GENERATOR_COLUMNS} FROM {old}")
    if op.get_bind().dialect.name == "postgresql":  # the copied ids were not drawn from the new sequence
        op.execute(
            f"SELECT setval(pg_get_serial_sequence('{new}', 'id'), COALESCE(MAX(id), 1), "
            f"MAX(id) IS NOT NULL) FROM {new}"
        )
    old_col, new_col = f"{old[:-1]}_id", f"{new[:-1]}_id"
    with op.batch_alter_table("adapters") as batch:
        batch.drop_index(f"adapters_document_version_id_{old_col}_idx")
        batch.drop_index(f"adapters_{old_col}_idx")
        batch.drop_constraint(f"adapters_{old_col}_fkey", type_="foreignkey")
        batch.alter_column(
            old_col, new_column_name=new_col, existing_type=sa.Integer(), existing_nullable=False
        )
    with op.batch_alter_table("adapters") as batch:  # in the same batch, SQLite loses the renamed key
        batch.create_foreign_key(f"adapters_{new_col}_fkey", new, [new_col], ["id"])
    op.create_index(f"adapters_{new_col}_idx", "adapters", [new_col])
    op.create_index(f"adapters_document_version_id_{new_col}_idx", "adapters", ["document_version_id", new_col])
    op.drop_table(old)


def git_to_json(cursor: str) -> str | None:
    return json.dumps({"commit": cursor}) if cursor and "{" not in cursor else None


def wiki_to_json(cursor: str) -> str | None:
    stamp, sep, rcid = cursor.partition("|")
    if not sep or not rcid.isdigit():
        return None
    return json.dumps({"rcid": int(rcid), "timestamp": stamp}, sort_keys=True)


def git_from_json(cursor: str) -> str | None:
    value = _json(cursor)
    return value.get("commit") if isinstance(value, dict) else None


def wiki_from_json(cursor: str) -> str | None:
    value = _json(cursor)
    if not isinstance(value, dict) or "timestamp" not in value:
        return None
    return f"{value['timestamp']}|{value['rcid']}"


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def convert_cursors(by_kind: dict[str, Callable[[str], str | None]]) -> None:
    """Rewrite every stored cursor (the sources' and the runs' history) with ``by_kind``'s functions.

    Offline (``--sql``) there are no rows to read: the script leaves cursors as they are, and a connector
    that cannot read its old cursor warns and compares the whole source with the catalog once.
    """
    if context.is_offline_mode():
        return
    bind = op.get_bind()
    sources = sa.table("sources", sa.column("id"), sa.column("kind"), sa.column("cursor"))
    runs = sa.table(
        "refresh_runs",
        sa.column("id"),
        sa.column("source_id"),
        sa.column("cursor_before"),
        sa.column("cursor_after"),
    )
    kinds = dict(bind.execute(sa.select(sources.c.id, sources.c.kind)).all())
    for source_id, kind, cursor in bind.execute(
        sa.select(sources.c.id, sources.c.kind, sources.c.cursor)
    ).all():
        if cursor is not None and kind in by_kind and (new := by_kind[kind](cursor)) is not None:
            bind.execute(sources.update().where(sources.c.id == source_id).values(cursor=new))
    rows = bind.execute(
        sa.select(runs.c.id, runs.c.source_id, runs.c.cursor_before, runs.c.cursor_after)
    ).all()
    for run_id, source_id, before, after in rows:
        convert = by_kind.get(kinds.get(source_id, ""))
        if convert is None:
            continue
        values = {
            name: new
            for name, old in (("cursor_before", before), ("cursor_after", after))
            if old is not None and (new := convert(old)) is not None
        }
        if values:
            bind.execute(runs.update().where(runs.c.id == run_id).values(**values))


def upgrade() -> None:
    move_generators("hypernets", "generators")
    convert_cursors({"git": git_to_json, "mediawiki": wiki_to_json})


def downgrade() -> None:
    convert_cursors({"git": git_from_json, "mediawiki": wiki_from_json})
    move_generators("generators", "hypernets")
