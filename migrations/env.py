"""Alembic environment for the catalog; tasks.catalog.db.alembic_config supplies the URL (no alembic.ini)."""

from typing import Any

from alembic import context
from sqlalchemy import text
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

from tasks.catalog import models  # noqa: F401  (registers every table on Base.metadata)
from tasks.catalog.base import Base
from tasks.catalog.db import make_engine, normalise_url

config = context.config
target_metadata = Base.metadata
# Concurrent upgrades of one Postgres database queue on this lock instead of racing (any constant works).
MIGRATION_LOCK_ID = 7_146_115_111


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Migrations must not import the app: write our TypeDecorators as the SQLAlchemy type they wrap.
    if type_ == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"
    return False


def configure_options(backend: str) -> dict[str, Any]:
    sqlite = backend == "sqlite"
    return {
        "target_metadata": target_metadata,
        "compare_type": True,
        "compare_server_default": True,
        "render_as_batch": sqlite,  # SQLite cannot ALTER most things; batch mode rebuilds the table
        "render_item": render_item,
        "on_version_apply": _after_each_migration,
    }


def _after_each_migration(**_kw: Any) -> None:
    # The crash tests kill the process between two migrations of a first-time setup (tasks/faults.py).
    from tasks.faults import fault_point

    fault_point("catalog-setup")


def run_migrations_offline() -> None:
    url = normalise_url(config.get_main_option("sqlalchemy.url"))
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **configure_options(url.get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # Foreign keys off on SQLite: batch mode drops and recreates tables that others reference.
    engine = make_engine(config.get_main_option("sqlalchemy.url"), foreign_keys=False, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, **configure_options(connection.dialect.name))
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
