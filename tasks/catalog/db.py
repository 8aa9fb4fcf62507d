"""Engines, sessions and schema migrations for the catalog, on SQLite (the default) or PostgreSQL.

There is no alembic.ini: ``alembic_config`` builds the configuration in code, so the same migrations run
from the CLI, from flows and from tests against whatever URL they are given.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalise_url(url: str | URL) -> URL:
    """Parse a catalog URL; bare ``postgresql://`` (and ``postgres://``) URLs get the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str | URL, *, foreign_keys: bool = True, **engine_kwargs: Any) -> Engine:
    """Create an engine for a catalog URL.

    On SQLite the file's folder is created, foreign keys are enforced (unless ``foreign_keys=False``, which
    migrations use so that batch mode can copy tables), writers wait for each other instead of failing, and
    every transaction starts with ``BEGIN IMMEDIATE`` (see ``_sqlite_transactions``).

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///.instill/catalog.db`` or ``postgresql://user@host/db``.
        foreign_keys: enforce foreign keys on SQLite (Postgres always does).
        **engine_kwargs: passed to ``sqlalchemy.create_engine``.
    """
    parsed = normalise_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine_kwargs.setdefault("pool_pre_ping", True)
        return create_engine(parsed, **engine_kwargs)
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, **engine_kwargs)
    _sqlite_transactions(engine, foreign_keys=foreign_keys)
    return engine


def _sqlite_transactions(engine: Engine, *, foreign_keys: bool) -> None:
    # pysqlite delays BEGIN until the first INSERT/UPDATE, which breaks SAVEPOINT and makes DDL
    # non-transactional (SQLAlchemy's pysqlite docs). We take over BEGIN; IMMEDIATE takes the write lock
    # up front, so a transaction that reads and then writes waits on busy_timeout for a concurrent writer
    # instead of failing at once with "database is locked".
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(url: str | URL) -> sessionmaker[Session]:
    """A session factory bound to a new engine for ``url``; objects stay readable after commit."""
    return sessionmaker(make_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit if the block succeeds, roll back and re-raise if it fails."""
    with factory() as session, session.begin():
        yield session


def alembic_config(url: str | URL) -> Config:
    """Alembic configuration for the repository's migrations/ folder and the given database."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")  # revisions are numbered: 0001, 0002
    rendered = normalise_url(url).render_as_string(hide_password=False)
    # ConfigParser interpolates '%', which URL-encoded passwords contain.
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Migrate the catalog at ``url`` up to ``revision``; a no-op when it is already there."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | URL, revision: str) -> None:
    """Migrate the catalog at ``url`` down to ``revision`` (``"base"`` drops every table)."""
    command.downgrade(alembic_config(url), revision)


def current_revision(url: str | URL) -> str | None:
    """The revision the catalog at ``url`` is at, or None when it has never been migrated."""
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest revision in migrations/, i.e. what ``upgrade(url)`` brings a catalog to."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head
