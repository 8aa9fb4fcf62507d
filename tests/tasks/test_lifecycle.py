"""Promote, roll back, releases, audit and status on a real catalog, MLflow store and Prefect server."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from tasks import lifecycle, release
from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter, AliasEvent
from tasks.parse import parse_document
from tasks.runtime import runtime
from tests.fixtures.kb import DOCS, instill, refresh


@pytest.fixture
def two_versions(prefect_server, kb: Path, tmp_path: Path) -> dict:
    """Three documents refreshed twice, alpha.md edited in between: alpha has versions 1 and 2."""
    code, first, out = refresh(kb, tmp_path / "one.json")
    assert code == 0, out
    (kb.parent / "docs" / "alpha.md").write_text(DOCS["alpha.md"] + "\nIt closes at 18:00 on Fridays.\n")
    code, second, out = refresh(kb, tmp_path / "two.json")
    assert code == 0, out
    models = {r["document"]: r["model"] for r in first["registered"]}
    return {"config": str(kb), "alpha": models["docs:alpha.md"], "models": models}


def _snapshot(config: str) -> dict:
    """Every alias in the registry and every adapter state in the catalog."""
    rt = runtime(config)
    with session_scope(rt.sessions) as s:
        adapters = s.scalars(select(Adapter).order_by(Adapter.id)).all()
        states = {(a.registered_model, a.model_version): a.state for a in adapters}
        models = sorted({a.registered_model for a in adapters})
    aliases = {
        (m, alias): rt.registry.alias(m, alias) for m in models for alias in ("production", "candidate")
    }
    return {"states": states, "aliases": aliases}


def _events(config: str, model: str) -> list[tuple]:
    with session_scope(runtime(config).sessions) as s:
        rows = s.scalars(
            select(AliasEvent).where(AliasEvent.registered_model == model).order_by(AliasEvent.id)
        )
        return [(e.alias, e.from_version, e.to_version, e.actor, e.reason) for e in rows]


def test_promote_then_rollback_restores_registry_and_catalog(two_versions):
    config, alpha = two_versions["config"], two_versions["alpha"]
    before = _snapshot(config)
    assert before["aliases"][(alpha, "production")] == "2"

    code, out = instill(
        "promote",
        "docs:alpha.md",
        "--version",
        "1",
        "--actor",
        "ana",
        "--reason",
        "bad answers",
        "--config",
        config,
    )
    assert code == 0, out
    assert runtime(config).registry.alias(alpha, "production") == "1"
    code, out = instill(
        "rollback", "docs:alpha.md", "--actor", "ana", "--reason", "fixed", "--config", config
    )
    assert code == 0, out

    assert _snapshot(config) == before
    assert _events(config, alpha)[-2:] == [
        ("production", "2", "1", "ana", "bad answers"),
        ("production", "1", "2", "ana", "fixed"),
    ]


def test_release_rollback_restores_every_production_version(two_versions):
    config, alpha = two_versions["config"], two_versions["alpha"]
    listed = release.list_releases(config)
    assert [r["release"] for r in listed] == ["1", "2"], (
        "each refresh that changed production wrote a release"
    )
    first_release = release.read_release(runtime(config), "1")
    wanted = {d["model"]: d["version"] for d in first_release["documents"]}
    assert wanted[alpha] == "1" and len(wanted) == 3

    code, out = instill("rollback", "--release", "1", "--actor", "ops", "--config", config)
    assert code == 0, out
    registry = runtime(config).registry
    assert {m: registry.alias(m, "production") for m in wanted} == wanted
    releases = release.list_releases(config)
    assert releases[-1]["restored_from"] == "1", "the restore is itself on record as a release"
    code, out = instill("rollback", "--release", "9", "--config", config)
    assert code == 2 and "no release 9" in out


def test_audit_of_production_leads_back_to_the_source_revision(two_versions, tmp_path):
    config, alpha = two_versions["config"], two_versions["alpha"]
    code, out = instill("audit", "adapter", f"{alpha}@production", "--json", "--config", config)
    assert code == 0, out
    record = json.loads(out)
    source_file = Path(config).parent / "docs" / "alpha.md"
    data = source_file.read_bytes()
    assert record["source_revision"] == hashlib.sha256(data).hexdigest(), "local revision = content sha256"
    assert record["raw_sha256"] == hashlib.sha256(data).hexdigest()
    assert record["text_sha256"] == parse_document(data, "alpha.md").text_sha256
    assert record["version"] == "2" and record["state"] == "production"
    assert record["generator"]["fingerprint"] and record["base_model"]["weights_sha256"]
    assert record["mlflow_run_id"] and record["flow_run_id"]
    assert [(e["alias"], e["to_version"]) for e in record["alias_events"]] == [
        ("candidate", "2"),
        ("production", "2"),
    ]
    code, out = instill("audit", "doc", "docs:alpha.md", "--json", "--config", config)
    doc = json.loads(out)
    assert [v["change_kind"] for v in doc["versions"]] == ["added", "modified"]
    assert doc["production"] == "2"


def test_status_lists_production_per_document(two_versions):
    code, out = instill("status", "--json", "--config", two_versions["config"])
    assert code == 0, out
    rows = {r["document"]: r["production"] for r in json.loads(out)}
    assert rows == {"docs:alpha.md": "2", "docs:beta.txt": "1", "docs:gamma.html": "1"}


def test_concurrent_promotions_are_serialised(two_versions):
    config, alpha = two_versions["config"], two_versions["alpha"]
    errors: list[BaseException] = []

    def move(version: str) -> None:
        try:
            lifecycle.promote(config, "docs:alpha.md", version, actor=f"t{version}", reason="race")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(v,)) for v in ("1", "2", "1", "2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    production = [e for e in _events(config, alpha) if e[0] == "production"]
    for earlier, later in zip(production, production[1:], strict=False):
        assert later[1] == earlier[2], "each move records the version it really replaced"
    assert runtime(config).registry.alias(alpha, "production") == production[-1][2]


def test_unknown_document_gets_a_clear_error(two_versions):
    code, out = instill("promote", "docs:nope.md", "--config", two_versions["config"])
    assert code == 2 and "no document 'docs:nope.md'" in out


def test_lifecycle_flows_record_their_flow_run(two_versions):
    from flows.lifecycle import promote as promote_flow
    from flows.lifecycle import rollback as rollback_flow

    config, alpha = two_versions["config"], two_versions["alpha"]
    moved = promote_flow(config, "docs:alpha.md", "1", actor="flow", reason="via prefect")
    assert moved == {"model": alpha, "alias": "production", "from_version": "2", "to_version": "1"}
    back = rollback_flow(config, "docs:alpha.md", actor="flow", reason="undo")
    assert back["to_version"] == "2"
    with session_scope(runtime(config).sessions) as s:
        events = s.scalars(select(AliasEvent).where(AliasEvent.actor == "flow").order_by(AliasEvent.id)).all()
        assert len(events) == 2 and all(e.flow_run_id for e in events)
        assert events[0].flow_run_id != events[1].flow_run_id


def test_documents_can_be_named_by_their_model(two_versions):
    config, alpha = two_versions["config"], two_versions["alpha"]
    code, out = instill("rollback", alpha, "--config", config)
    assert code == 0, out
    assert runtime(config).registry.alias(alpha, "production") == "1"
    code, out = instill("promote", "testkb-docs-999", "--config", config)
    assert code == 2 and "no document" in out
