"""Instruction documents in `refresh`: a Text-to-LoRA adapter, the instruction gate, the catalog's kind,
the registry, and malformed instructions recorded as failures that stop nothing else."""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from hypernet.adapter import read_lineage
from tasks.audit import audit_adapter
from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter, QAResult
from tasks.catalog.types import AdapterState
from tasks.runtime import runtime
from tests.fixtures.instructions import STYLE, instruction_kb
from tests.fixtures.kb import instill, refresh
from tests.fixtures.models import make_tiny_t2l

BODY = "Mention the refund policy number in every reply."


def _adapters(config) -> dict[str, Adapter]:
    rt = runtime(config)
    with session_scope(rt.sessions) as s:
        rows = s.scalars(select(Adapter)).all()
        out = {a.document_version.document.label: a for a in rows}
        for a in rows:  # loaded while the session is open
            _ = (a.generator.kind, a.document_version.text_sha256, list(a.qa_results))
        s.expunge_all()
    return out


def test_an_instruction_document_gets_a_t2l_adapter_gated_registered_and_labelled(
    prefect_server, tiny_model_dir, tiny_t2l_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    config = instruction_kb(
        tmp_path, tiny_model_dir, tiny_t2l_dir, {"style.md": STYLE}, gates={"enabled": True}
    )
    code, summary, out = refresh(config, tmp_path / "one.json")
    assert summary.get("generated") == 2, out
    adapters = _adapters(config)
    style, alpha = adapters["docs:style.md"], adapters["docs:alpha.md"]
    assert style.kind == "instruction" and alpha.kind == "knowledge"
    assert style.generator.kind == "t2l" and alpha.generator.kind == "cd"
    assert set(style.targets) == {"q_proj", "v_proj"} and alpha.targets == ["down_proj"]
    assert style.document_version.text_sha256 == hashlib.sha256(BODY.encode()).hexdigest()

    suites = {q.suite for q in style.qa_results}
    assert suites == {"instruction"}, "the instruction gate, not the knowledge gates"
    assert {q.metric for q in style.qa_results} == {"nll_increase", "effect"}
    assert style.state is AdapterState.PRODUCTION, "passed its gate: promoted like any adapter"
    assert "knowledge" in {q.suite for q in alpha.qa_results}
    assert style.registered_model and alpha.registered_model, "both registered"

    rt = runtime(config)
    mv = rt.registry.client.get_model_version(style.registered_model, style.model_version)
    assert mv.tags["kind"] == "instruction" and mv.tags["qa_verdict"] == "passed"
    lineage = audit_adapter(str(config), f"{style.registered_model}@production")
    assert lineage["kind"] == "instruction" and lineage["generator"]["kind"] == "t2l"
    assert lineage["source_revision"] == style.document_version.source_revision
    assert lineage["parser"] == "instruction"
    assert read_lineage(rt.store.get_dir(style.store_uri))["kind"] == "instruction", "instill.json too"
    assert [row["kind"] for row in summary["registered"] if row["document"] == "docs:style.md"] == [
        "instruction"
    ]

    code, again, out = refresh(config, tmp_path / "two.json")
    assert sum(again["changed"].values()) == 0 and again["generated"] == 0, out

    # A new revision is promoted and rolled back like any adapter.
    (tmp_path / "docs" / "style.md").write_text(STYLE + "Quote it as POL-7.\n")
    code, third, out = refresh(config, tmp_path / "three.json")
    assert rt.registry.alias(style.registered_model, "production") == "2", out
    code, out = instill("rollback", "docs:style.md", "--reason", "test", "--config", str(config))
    assert code == 0, out
    assert rt.registry.alias(style.registered_model, "production") == "1"


def test_a_failed_instruction_gate_is_reported_and_production_stays_empty(
    prefect_server, tiny_model_dir, tiny_base, tmp_path, monkeypatch
):
    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    inert = make_tiny_t2l(tiny_base, tmp_path / "inert-t2l", 0.0)  # its adapters change no answer
    gate = {"min_effect": 0.5, "inputs": 2, "max_new_tokens": 4}
    config = instruction_kb(
        tmp_path, tiny_model_dir, inert, {"style.md": STYLE}, gates={"enabled": True}, instruction_gate=gate
    )
    code, summary, out = refresh(config, tmp_path / "one.json")
    assert code == 1, out
    reasons = {f["document"]: f["reason"] for f in summary["failed"]}
    assert reasons["docs:style.md"].startswith("failed QA gates: effect: the adapter changed 0.00"), reasons
    style = _adapters(config)["docs:style.md"]
    assert style.state is AdapterState.FAILED and style.registered_model, "registered for the record"
    rt = runtime(config)
    assert rt.registry.alias(style.registered_model, "production") is None
    with session_scope(rt.sessions) as s:
        rows = s.scalars(select(QAResult).where(QAResult.adapter_id == style.id)).all()
        assert any(r.metric == "effect" and r.value == 0.0 and not r.passed for r in rows)
    assert summary["generated"] == 2 and _adapters(config)["docs:alpha.md"].registered_model, (
        "the other document went on"
    )


def test_a_source_with_content_instruction_makes_every_document_an_instruction(
    prefect_server, tiny_model_dir, tiny_t2l_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "tone.txt").write_text("Reply politely and keep every answer under fifty words.\n")
    config = instruction_kb(
        tmp_path,
        tiny_model_dir,
        tiny_t2l_dir,
        {},
        sources=[{"kind": "local", "name": "rules", "path": "rules", "content": "instruction"}],
    )
    code, summary, out = refresh(config, tmp_path / "one.json")
    assert code == 0, out
    adapters = _adapters(config)
    assert adapters["rules:tone.txt"].kind == "instruction"
    assert adapters["rules:tone.txt"].generator.kind == "t2l"
    assert adapters["docs:alpha.md"].kind == "knowledge"
    assert {r["document"]: r["kind"] for r in summary["registered"]} == {
        "docs:alpha.md": "knowledge",
        "rules:tone.txt": "instruction",
    }


def test_a_malformed_instruction_is_a_failed_document_and_the_others_go_on(
    prefect_server, tiny_model_dir, tiny_t2l_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    files = {
        "recipe.md": "---\ninstill: {kind: recipe}\n---\nBake it.\n",
        "empty.md": "---\ninstill: {kind: instruction}\n---\n\n",
    }
    config = instruction_kb(tmp_path, tiny_model_dir, tiny_t2l_dir, files)
    code, summary, out = refresh(config, tmp_path / "one.json")
    assert code == 1, out
    reasons = {f["document"]: f["reason"] for f in summary["failed"]}
    assert "recipe.md: unknown instill kind 'recipe'" in reasons["docs:recipe.md"]
    assert "empty.md" in reasons["docs:empty.md"] and "no text" in reasons["docs:empty.md"]
    assert [r["document"] for r in summary["registered"]] == ["docs:alpha.md"]
    assert set(_adapters(config)) == {"docs:alpha.md"}
