"""The catalog models on a migrated database: lineage round-trips, constraints hold, states are plain text."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from tasks.catalog import (
    Adapter,
    AdapterState,
    AliasEvent,
    Document,
    DocumentState,
    DocumentVersion,
    Generator,
    QAResult,
    RefreshRun,
    RunStatus,
    Source,
    make_engine,
    session_factory,
    session_scope,
    upgrade,
)

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A catalog migrated once per session; tests roll their writes back (see ``session``)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('catalog')}/catalog.db"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    return url


@pytest.fixture
def session(catalog_url: str) -> Iterator[Session]:
    """A session inside an outer transaction that is rolled back, so tests never see each other's rows."""
    engine = make_engine(catalog_url)
    with engine.connect() as connection:
        transaction = connection.begin()
        with Session(bind=connection, join_transaction_mode="create_savepoint") as session:
            yield session
        transaction.rollback()
    engine.dispose()


def add_source(session: Session, name: str = "handbook") -> Source:
    source = Source(name=name, kind="git", uri="https://git.example/handbook.git", config={"branch": "main"})
    session.add(source)
    session.flush()
    return source


def add_lineage(session: Session) -> Adapter:
    """One adapter with everything it depends on: source, document, version, generator."""
    document = Document(source=add_source(session), external_key="docs/a.md", current_path="docs/a.md")
    version = DocumentVersion(
        document=document,
        source_revision="3f2c",
        raw_sha256=SHA_A,
        text_sha256=SHA_B,
        parser="unstructured",
        parser_version="0.27.35",
        tokens=412,
        change_kind="added",
        path="docs/a.md",
    )
    generator = Generator(
        name="smollm2-d2l",
        kind="hypernet",
        fingerprint=SHA_C,
        base_model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        base_model_sha256=SHA_A,
        checkpoint_sha256=SHA_B,
        config={"rank": 8},
        metrics={"gap_closed": 0.41},
    )
    adapter = Adapter(
        document_version=version,
        generator=generator,
        adapter_sha256=SHA_B,
        store_uri="file:///store/ab/" + SHA_B,
        rank=8,
        targets=["down_proj"],
    )
    session.add(adapter)
    session.flush()
    return adapter


def test_full_lineage_round_trips_through_the_relationships(session: Session) -> None:
    adapter = add_lineage(session)
    source = adapter.document_version.document.source
    knowledge = dict(suite="knowledge", suite_version="1", metric="gap_closed", value=0.5, threshold=0.2)
    preservation = dict(
        suite="preservation", suite_version="1", metric="nll_rise", value=None, threshold=0.05
    )
    session.add_all(
        [
            QAResult(adapter=adapter, passed=True, detail={"probes": 12}, **knowledge),
            QAResult(adapter=adapter, passed=False, **preservation),
            AliasEvent(
                registered_model="doc-1",
                alias="candidate",
                to_version="1",
                adapter=adapter,
                actor="refresh",
                reason="passed QA",
            ),
            RefreshRun(source=source, cursor_after="3f2c", counts={"changed": 1, "generated": 1}),
        ]
    )
    session.flush()
    adapter_id = adapter.id
    session.expunge_all()

    loaded = session.get_one(Adapter, adapter_id)
    document = loaded.document_version.document
    assert document.source.name == "handbook"
    assert document.source.config == {"branch": "main"}
    assert [v.source_revision for v in document.versions] == ["3f2c"]
    assert loaded.generator.fingerprint == SHA_C
    assert loaded.targets == ["down_proj"]
    assert [(r.suite, r.passed, r.value) for r in loaded.qa_results] == [
        ("knowledge", True, 0.5),
        ("preservation", False, None),
    ]
    assert loaded.qa_results[0].detail == {"probes": 12}
    event = session.scalars(select(AliasEvent)).one()
    assert (event.adapter.id, event.from_version, event.to_version, event.reason) == (
        adapter_id,
        None,
        "1",
        "passed QA",
    )
    run = document.source.refresh_runs[0]
    assert (run.status, run.counts, run.finished_at) == (
        RunStatus.RUNNING,
        {"changed": 1, "generated": 1},
        None,
    )


def test_defaults_fill_state_and_aware_utc_timestamps(session: Session) -> None:
    adapter = add_lineage(session)
    session.expire_all()  # reload the server-side defaults

    document = adapter.document_version.document
    assert document.state is DocumentState.ACTIVE
    assert adapter.state is AdapterState.CANDIDATE
    for stamp in (document.created_at, document.updated_at, adapter.created_at, adapter.generator.created_at):
        assert stamp.tzinfo is UTC
        assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=5)


def test_aware_timestamps_are_stored_as_utc_and_naive_ones_are_refused(session: Session) -> None:
    run = RefreshRun(source=add_source(session), counts={})
    run.finished_at = datetime(2026, 1, 2, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    session.add(run)
    session.flush()
    session.expire_all()
    assert run.finished_at == datetime(2026, 1, 2, 10, 0, tzinfo=UTC)
    assert run.finished_at.tzinfo is UTC

    run.finished_at = datetime(2026, 1, 2, 12, 0)
    with pytest.raises(StatementError, match="naive datetime"):
        session.flush()


def test_duplicate_external_key_in_one_source_is_rejected(session: Session) -> None:
    source = add_source(session)
    session.add(Document(source=source, external_key="docs/a.md", current_path="docs/a.md"))
    session.flush()

    session.add(Document(source=source, external_key="docs/a.md", current_path="docs/renamed.md"))
    with pytest.raises(IntegrityError):
        session.flush()


def test_the_same_external_key_is_allowed_in_another_source(session: Session) -> None:
    for name in ("handbook", "wiki"):
        session.add(Document(source=add_source(session, name), external_key="1", current_path="Main"))
    session.flush()
    assert len(session.scalars(select(Document).where(Document.external_key == "1")).all()) == 2


def test_duplicate_generator_fingerprint_is_rejected(session: Session) -> None:
    add_lineage(session)
    session.add(
        Generator(name="copy", kind="cd", fingerprint=SHA_C, base_model_id="m", base_model_sha256=SHA_A)
    )
    with pytest.raises(IntegrityError):
        session.flush()


def test_foreign_keys_are_enforced(session: Session) -> None:
    session.add(Document(source_id=999_999, external_key="orphan.md", current_path="orphan.md"))
    with pytest.raises(IntegrityError):
        session.flush()


def test_states_are_stored_as_their_values_in_plain_text_columns(session: Session) -> None:
    adapter = add_lineage(session)
    adapter.state = AdapterState.PRODUCTION
    adapter.document_version.document.state = DocumentState.DELETED
    session.add(RefreshRun(source=adapter.document_version.document.source, status=RunStatus.PARTIAL))
    session.flush()

    assert session.execute(text("select state from documents")).scalar_one() == "deleted"
    assert session.execute(text("select state from adapters")).scalar_one() == "production"
    assert session.execute(text("select status from refresh_runs")).scalar_one() == "partial"
    column = next(c for c in inspect(session.connection()).get_columns("documents") if c["name"] == "state")
    assert column["type"].python_type is str
    assert column["type"].length == 32


def test_a_state_outside_the_enum_is_refused_before_it_reaches_the_database(session: Session) -> None:
    document = Document(source=add_source(session), external_key="a.md", current_path="a.md")
    document.state = "archived"  # type: ignore[assignment]
    session.add(document)
    with pytest.raises(StatementError, match="archived"):
        session.flush()


def test_session_scope_commits_on_success_and_rolls_back_on_error(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/nested/dir/catalog.db"
    upgrade(url)  # also proves the parent folders get created
    factory = session_factory(url)

    with session_scope(factory) as session:
        session.add(Source(name="kept", kind="local", uri="/docs"))
    with pytest.raises(RuntimeError, match="boom"), session_scope(factory) as session:
        session.add(Source(name="dropped", kind="local", uri="/docs"))
        session.flush()
        raise RuntimeError("boom")

    with factory() as session:
        assert session.scalars(select(Source.name)).all() == ["kept"]
    factory.kw["bind"].dispose()


def test_sqlite_savepoints_nest_inside_the_session_transaction(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/catalog.db"
    upgrade(url)
    factory = session_factory(url)
    # Plain pysqlite starts no transaction before a SAVEPOINT, so its RELEASE would commit "nested" alone.
    with pytest.raises(RuntimeError, match="outer fails"), session_scope(factory) as session:
        with session.begin_nested():
            session.add(Source(name="nested", kind="local", uri="/a"))
        raise RuntimeError("outer fails")
    # A failed savepoint rolls back its own part only.
    with session_scope(factory) as session:
        session.add(Source(name="outer", kind="local", uri="/a"))
        with pytest.raises(IntegrityError), session.begin_nested():
            session.add(Source(name="outer", kind="local", uri="/b"))
        session.add(Source(name="after", kind="local", uri="/c"))

    with factory() as session:
        assert session.scalars(select(Source.name).order_by(Source.id)).all() == ["outer", "after"]
    factory.kw["bind"].dispose()


@pytest.mark.parametrize(
    "url", ["postgresql://u@db.example/c", "postgres://u@db.example/c", "postgresql+psycopg://u@db.example/c"]
)
def test_postgres_urls_use_psycopg_3(url: str) -> None:
    engine = make_engine(url)
    assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")
    engine.dispose()
