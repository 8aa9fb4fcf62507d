"""QA gates in the refresh: every metric and verdict on record; a failing adapter never reaches production."""

from __future__ import annotations

import yaml
from sqlalchemy import select

from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter, QAResult
from tasks.catalog.types import AdapterState
from tasks.runtime import forget_runtimes, runtime
from tests.fixtures.kb import DOCS, refresh


def _enable_gates(config) -> None:
    data = yaml.safe_load(config.read_text())
    data["gates"] = {"enabled": True}
    config.write_text(yaml.safe_dump(data))
    forget_runtimes()


def test_a_failing_adapter_is_recorded_and_production_stays(prefect_server, kb, tmp_path):
    code, first, out = refresh(kb, tmp_path / "one.json")
    assert code == 0, out
    alpha = next(r["model"] for r in first["registered"] if r["document"] == "docs:alpha.md")

    _enable_gates(kb)  # a random tiny model's adapters cannot pass the knowledge gate
    (kb.parent / "docs" / "alpha.md").write_text(DOCS["alpha.md"] + "\nThe station has 14 rooms.\n")
    code, second, out = refresh(kb, tmp_path / "two.json")
    assert code == 1, "a gate failure is a failed document"
    assert second["generated"] == 1 and second["registered"] == []
    assert [f["document"] for f in second["failed"]] == ["docs:alpha.md"]
    assert second["failed"][0]["reason"].startswith("failed QA gates: knowledge")

    rt = runtime(kb)
    assert rt.registry.alias(alpha, "production") == "1", "the previous production adapter stays live"
    assert rt.registry.alias(alpha, "candidate") == "1"
    with session_scope(rt.sessions) as s:
        failed = s.scalars(select(Adapter).where(Adapter.state == AdapterState.FAILED)).one()
        assert failed.registered_model == alpha and failed.model_version == "2"
        assert "knowledge" in failed.error
        rows = s.scalars(select(QAResult).where(QAResult.adapter_id == failed.id)).all()
        suites = {r.suite for r in rows}
        assert {"knowledge", "specificity", "preservation", "regression"} <= suites
        assert any(not r.passed for r in rows if r.suite == "knowledge")
        run_id = failed.mlflow_run_id
    run = rt.registry.client.get_run(run_id)
    assert any(k.startswith("qa.knowledge.") for k in run.data.metrics), "metrics are on the MLflow run too"
    assert rt.registry.client.get_model_version(alpha, "2").tags["qa_verdict"].startswith("failed")

    code, third, out = refresh(kb, tmp_path / "three.json")
    assert sum(third["changed"].values()) == 0 and third["generated"] == 0 and third["failed"] == []
    assert code == 0, "a failed adapter is not regenerated for the same text and generator"


def test_a_broken_qa_file_fails_its_document_with_the_file_named(prefect_server, kb, tmp_path):
    _enable_gates(kb)
    (kb.parent / "docs" / "beta.qa.yaml").write_text("- question: Who leads the crew?\n  nonsense: 3\n")
    code, summary, out = refresh(kb, tmp_path / "one.json")
    assert code == 1
    reasons = {f["document"]: f["reason"] for f in summary["failed"]}
    assert "beta.qa.yaml" in reasons["docs:beta.txt"]
    assert summary["changed"]["added"] == 3, "the probe file is not a document"


def test_promoting_a_failed_adapter_is_refused(prefect_server, kb, tmp_path):
    from tests.fixtures.kb import instill

    refresh(kb, tmp_path / "one.json")
    _enable_gates(kb)
    (kb.parent / "docs" / "alpha.md").write_text(DOCS["alpha.md"] + "\nThe station has 14 rooms.\n")
    refresh(kb, tmp_path / "two.json")
    code, out = instill("promote", "docs:alpha.md", "--version", "2", "--config", str(kb))
    assert code == 2 and "failed its QA gates" in out
