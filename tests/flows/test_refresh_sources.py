"""Refresh across real servers at once: Git over ``git daemon``, S3 (moto) and MediaWiki.

The end-to-end test runs the CLI three times on a tiny random model: everything is new; then edits,
moves, deletions, a create-then-delete, unchanged renames and a broken S3 credential; then the credential
is fixed. Each ``--json`` summary must count exactly those changes, with the catalog and MLflow to match.
The two smaller tests drive the pipeline's steps directly (no model) for the failure paths.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter, Document, DocumentVersion, RefreshRun
from tasks.catalog.models import Source as SourceRow
from tasks.catalog.types import DocumentState, RunStatus
from tasks.detect import detect as plan_source
from tasks.finish import finish as finish_run
from tasks.record import record as record_change
from tasks.runtime import forget_runtimes, runtime
from tests.fixtures.git import WorkRepo
from tests.fixtures.proxy import FlakyProxy

S3_KEY, S3_SECRET, WIKI_PASSWORD = (
    "INSTILL_TEST_S3_KEY",
    "INSTILL_TEST_S3_SECRET",
    "INSTILL_TEST_WIKI_PASSWORD",
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    forget_runtimes()
    yield tmp_path
    forget_runtimes()


def write_config(folder: Path, sources: list[dict], base_model: str = "smollm2-135m-instruct") -> Path:
    config = folder / "instill.yaml"
    generator = {"name": "cd", "base_model": base_model, "options": {"steps": 2}}
    # A random tiny model cannot show knowledge, so the gates are off here (tests/test_refresh_gates.py).
    gates = {"enabled": False}
    config.write_text(
        yaml.safe_dump({"name": "testkb", "sources": sources, "generator": generator, "gates": gates})
    )
    return config


def s3_source(server, bucket: str, **extra) -> dict:
    return {"kind": "s3", "name": "bucket", "bucket": bucket, "endpoint_url": server.endpoint_url,
            "access_key_id_env": S3_KEY, "secret_access_key_env": S3_SECRET, **extra}  # fmt: skip


def wiki_source(wiki, ns: int, api_url: str | None = None, **extra) -> dict:
    login = {"username": wiki.reader_user, "password_env": WIKI_PASSWORD}
    return {
        "kind": "mediawiki",
        "name": "wiki",
        "api_url": api_url or wiki.api_url,
        **login,
        "namespaces": [ns],
        **extra,
    }


def refresh(config: Path, name: str) -> tuple[int, dict, str]:
    from flows.cli import app

    out = config.parent / f"{name}.json"
    result = CliRunner().invoke(app, ["refresh", "--config", str(config), "--json", str(out)])
    return result.exit_code, json.loads(out.read_text()) if out.exists() else {}, result.output


def test_refresh_across_git_s3_and_wiki_counts_exactly_what_changed(
    prefect_server,
    home,
    tiny_model_dir,
    git_daemon,
    s3_server,
    make_bucket,
    mediawiki,
    wiki_namespace,
    monkeypatch,
):
    ns, editor = wiki_namespace, mediawiki.editor()
    repo = WorkRepo.create(home / "work")
    repo.write("a.md", "# Alpha\n\nThe Alpha station opened in 1987.\n")
    repo.write("b.md", "# Beta\n\nBeta robots are serviced every Tuesday.\n")
    repo.commit("two documents")
    bare = f"kb-{uuid.uuid4().hex[:8]}.git"
    repo.publish(git_daemon.base / bare)
    bucket = make_bucket()
    bucket.put("move.md", "# Gamma\n\nGamma tea grows on the Sorrel hills.\n")
    bucket.put("gone.md", "# Delta\n\nThe Delta ferry leaves at noon.\n")
    pages = {
        name: editor.save(f"T{ns}:{name}", f"{name} facts: the {name.lower()} archive holds {i} maps.")[
            "pageid"
        ]
        for i, name in enumerate(("Edit", "Move", "Gone"), start=3)
    }
    monkeypatch.setenv(S3_KEY, s3_server.access_key_id)
    monkeypatch.setenv(S3_SECRET, s3_server.secret_access_key)
    monkeypatch.setenv(WIKI_PASSWORD, mediawiki.reader_password)
    git = {"kind": "git", "name": "repo", "url": git_daemon.url(bare)}
    config = write_config(home, [git, s3_source(s3_server, bucket.name), wiki_source(mediawiki, ns)],
                          str(tiny_model_dir))  # fmt: skip

    code, first, output = refresh(config, "first")
    assert code == 0, output
    assert first["changed"] == {"added": 7, "modified": 0, "renamed": 0, "deleted": 0}
    assert first["generated"] == 7 and first["failed"] == [] and first["retired"] == 0
    models = {r["document"]: r["model"] for r in first["registered"]}
    assert set(models) == {"repo:a.md", "repo:b.md", "bucket:move.md", "bucket:gone.md"} | {
        f"wiki:{page_id}" for page_id in pages.values()
    }

    repo.write("a.md", "# Alpha\n\nThe Alpha station opened in 1987 and closed in 2019.\n")
    repo.move("b.md", "docs/b2.md")
    repo.commit("edit and rename")
    repo.push()
    bucket.rename("move.md", "moved/move.md")
    bucket.delete("gone.md")
    bucket.put("new.md", "# Epsilon\n\nEpsilon lamps burn whale-free oil.\n")
    editor.save(f"T{ns}:Edit", "Edit facts: the archive now holds 40 maps.")
    editor.move(f"T{ns}:Move", f"T{ns}:Moved")
    editor.delete(f"T{ns}:Gone")
    new_page = editor.save(f"T{ns}:New", "New facts: the new wing opened in May.")["pageid"]
    editor.save(f"T{ns}:Brief", "Brief facts, gone before anyone looked.")
    editor.delete(f"T{ns}:Brief")
    broken = "a-wrong-secret-for-this-test"
    monkeypatch.setenv(S3_SECRET, broken)

    code, second, output = refresh(config, "second")
    assert code == 1, "a failed source makes the exit status non-zero"
    assert second["changed"] == {"added": 1, "modified": 2, "renamed": 2, "deleted": 1}
    assert second["generated"] == 3, "the two unchanged renames are not regenerated"
    registered = sorted(r["document"] for r in second["registered"])
    assert registered == sorted(["repo:a.md", f"wiki:{new_page}", f"wiki:{pages['Edit']}"])
    assert [f["document"] for f in second["failed"]] == ["bucket:*"]
    assert "SignatureDoesNotMatch" in second["failed"][0]["reason"]
    assert second["retired"] == 1
    assert broken not in output and s3_server.secret_access_key not in output

    monkeypatch.setenv(S3_SECRET, s3_server.secret_access_key)
    code, third, output = refresh(config, "third")
    assert code == 0, output
    assert third["changed"] == {"added": 1, "modified": 0, "renamed": 1, "deleted": 1}
    assert third["generated"] == 1 and [r["document"] for r in third["registered"]] == ["bucket:new.md"]
    assert third["failed"] == [] and third["retired"] == 1

    registry = runtime(config).registry
    expected_production = {
        "repo:a.md": "2",
        "repo:b.md": "1",
        "bucket:move.md": "1",
        "bucket:gone.md": None,
        f"wiki:{pages['Edit']}": "2",
        f"wiki:{pages['Move']}": "1",
        f"wiki:{pages['Gone']}": None,
    }
    assert {doc: registry.alias(models[doc], "production") for doc in models} == expected_production

    with session_scope(runtime(config).sessions) as s:
        sources = {row.name: row for row in s.scalars(select(SourceRow))}
        assert s3_server.secret_access_key not in json.dumps(sources["bucket"].config)
        assert sources["bucket"].config["secret_access_key_env"] == S3_SECRET
        assert sources["wiki"].config["password_env"] == WIKI_PASSWORD
        runs = s.scalars(select(RefreshRun).where(RefreshRun.source_id == sources["bucket"].id)).all()
        assert [r.status for r in runs] == [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.SUCCEEDED]
        assert runs[1].cursor_after == runs[1].cursor_before
        wiki_runs = s.scalars(select(RefreshRun).where(RefreshRun.source_id == sources["wiki"].id)).all()
        assert wiki_runs[1].cursor_after != wiki_runs[0].cursor_after == wiki_runs[1].cursor_before

        docs = {(d.source.name, d.external_key): d for d in s.scalars(select(Document))}
        moved = docs["wiki", str(pages["Move"])]
        assert (moved.current_path, moved.title, moved.state) == (
            str(pages["Move"]),
            f"T{ns}:Moved",
            DocumentState.ACTIVE,
        )
        assert [(v.change_kind, v.path) for v in moved.versions] == [
            ("added", f"T{ns}:Move"),
            ("renamed", f"T{ns}:Moved"),
        ]
        assert moved.versions[0].text_sha256 == moved.versions[1].text_sha256
        adapters = s.scalars(
            select(Adapter).join(DocumentVersion).where(DocumentVersion.document_id == moved.id)
        )
        assert len(adapters.all()) == 1, "the moved page keeps its one adapter"
        assert docs["wiki", str(pages["Gone"])].state is DocumentState.DELETED
        assert docs["bucket", "move.md"].current_path == "moved/move.md"
        assert docs["repo", "b.md"].current_path == "docs/b2.md"
        assert not any(d.title == f"T{ns}:Brief" for d in docs.values()), (
            "created and deleted: never recorded"
        )


def test_a_wiki_outage_mid_run_keeps_the_cursor_and_the_next_run_finishes(
    home, mediawiki, wiki_namespace, monkeypatch
):
    ns, editor = wiki_namespace, mediawiki.editor()
    for name in ("One", "Two"):
        editor.save(f"T{ns}:{name}", f"{name} facts.")
    monkeypatch.setenv(WIKI_PASSWORD, mediawiki.reader_password)
    proxy = FlakyProxy(mediawiki.port)
    try:
        source = wiki_source(mediawiki, ns, api_url=proxy.url("/api.php"), retries=1, backoff_s=0.01)
        config = str(write_config(home, [source]))
        plan = plan_source(config, "wiki")
        assert [c.title for c in plan.changes] == [f"T{ns}:One", f"T{ns}:Two"]
        proxy.down()
        outcomes = [record_change(config, "wiki", c) for c in plan.changes]
        assert all(o.transient and "gave up after 2 attempts" in o.error for o in outcomes)
        finish_run(config, plan.run_id, RunStatus.FAILED, plan.cursor, {})
        proxy.up()

        retry = plan_source(config, "wiki")
        assert retry.changes == plan.changes, "the next run is given the unfinished documents again"
        assert not any(record_change(config, "wiki", c).error for c in retry.changes)
        finish_run(config, retry.run_id, RunStatus.SUCCEEDED, retry.cursor, {})
        assert plan_source(config, "wiki").changes == []
    finally:
        proxy.close()
    with session_scope(runtime(config).sessions) as s:
        titles = {d.title: d.state for d in s.scalars(select(Document))}
        assert titles == {f"T{ns}:One": DocumentState.ACTIVE, f"T{ns}:Two": DocumentState.ACTIVE}


def test_an_s3_object_over_the_size_limit_is_recorded_failed_once(home, s3_server, make_bucket, monkeypatch):
    bucket = make_bucket()
    bucket.put("small.md", "# Small\n\nSmall facts.\n")
    bucket.put("huge.md", "# Huge\n\n" + "Huge facts. " * 20)
    monkeypatch.setenv(S3_KEY, s3_server.access_key_id)
    monkeypatch.setenv(S3_SECRET, s3_server.secret_access_key)
    config = str(write_config(home, [s3_source(s3_server, bucket.name, max_bytes=100)]))
    plan = plan_source(config, "bucket")
    outcomes = {c.key: record_change(config, "bucket", c) for c in plan.changes}
    assert outcomes["small.md"].error is None
    huge = outcomes["huge.md"]
    assert not huge.transient and "over this source's max_bytes of 100" in huge.error
    finish_run(config, plan.run_id, RunStatus.PARTIAL, plan.cursor, {})
    assert plan_source(config, "bucket").changes == [], "a refused object is not retried while unchanged"
    with session_scope(runtime(config).sessions) as s:
        doc = s.scalar(select(Document).where(Document.current_path == "huge.md"))
        assert doc.state is DocumentState.FAILED
        assert "huge.md" in doc.versions[-1].error and doc.versions[-1].text_sha256 is None
