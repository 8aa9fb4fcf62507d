"""`ask` with an instruction adapter in production: applied together with the strategy's knowledge
adapters (or alone over `rag`'s prompt), named in the output, and switched off by a setting."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from hypernet.adapter import load_adapter
from tasks.runtime import forget_runtimes, runtime
from tests.fixtures.instructions import STYLE, instruction_kb
from tests.fixtures.kb import instill, refresh


@pytest.fixture
def live(prefect_server, tiny_model_dir, tiny_t2l_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    config = instruction_kb(tmp_path, tiny_model_dir, tiny_t2l_dir, {"style.md": STYLE})
    code, summary, out = refresh(config, tmp_path / "refresh.json")
    assert code == 0, out
    forget_runtimes()
    return config


def _record(output: str) -> dict:
    """The JSON record in the command's output (log lines may surround it)."""
    return json.JSONDecoder().raw_decode(output[output.index('{\n  "question"') :])[0]


def _production_weights(config, label: str):
    rt = runtime(config)
    from tasks.answer import production_documents

    doc = next(d for d in production_documents(rt) if d.label == label)
    return load_adapter(rt.registry.download_version(doc.model, doc.version))


def test_ask_applies_the_production_instruction_adapter_with_the_knowledge_adapter(live):
    from tasks.answer import Answerer

    answerer = Answerer(str(live), strategy="top1")
    assert [d.label for d in answerer.documents()] == ["docs:alpha.md"], "instructions are not routed"
    plan = answerer.plan("Who is the chief engineer of the Alpha station?")
    assert [d.label for d in plan.instructions] == ["docs:style.md"]
    leaves = {path.rsplit(".", 1)[-1] for path in plan.weights.modules}
    assert leaves == {"q_proj", "v_proj", "down_proj"}, "both adapters' modules at once"

    knowledge = _production_weights(live, "docs:alpha.md")
    instruction = _production_weights(live, "docs:style.md")
    for part in (knowledge, instruction):
        for path in part.modules:
            assert torch.allclose(plan.weights.delta(path), part.delta(path), atol=1e-6), path

    result = answerer.answer("Who is the chief engineer?")
    assert result["instructions"][0]["document"] == "docs:style.md"
    assert result["adapters"][0]["document"] == "docs:alpha.md"


def test_rag_applies_the_instruction_adapter_alone_over_the_retrieved_context(live):
    from tasks.answer import Answerer

    plan = Answerer(str(live), strategy="rag").plan("When did the Alpha station open?")
    assert "Mara Quill" in plan.context
    assert {p.rsplit(".", 1)[-1] for p in plan.weights.modules} == {"q_proj", "v_proj"}
    off = Answerer(str(live), strategy="rag", apply_instruction=False).plan("When did it open?")
    assert off.weights is None and off.instructions == []


def test_the_instruction_scale_setting_scales_the_instruction_update(live):
    from tasks.answer import Answerer

    data = yaml.safe_load(live.read_text())
    data["serving"]["instruction_scale"] = 0.5
    live.write_text(yaml.safe_dump(data))
    forget_runtimes()
    plan = Answerer(str(live), strategy="rag").plan("When did the Alpha station open?")
    instruction = _production_weights(live, "docs:style.md")
    for path in instruction.modules:
        assert torch.allclose(plan.weights.delta(path), 0.5 * instruction.delta(path), atol=1e-6), path


def test_ask_names_the_instruction_adapter_and_the_setting_turns_it_off(live):
    code, output = instill("ask", "Who is the chief engineer?", "--config", str(live))
    assert code == 0, output
    assert "instruction adapter: docs:style.md" in output

    code, output = instill("ask", "Who is the chief engineer?", "--json", "--config", str(live))
    assert _record(output)["instructions"][0]["document"] == "docs:style.md"

    data = yaml.safe_load(live.read_text())
    data["serving"]["apply_instruction"] = False
    live.write_text(yaml.safe_dump(data))
    forget_runtimes()
    code, output = instill("ask", "Who is the chief engineer?", "--json", "--config", str(live))
    assert code == 0 and _record(output)["instructions"] == []


def test_serve_names_the_instruction_adapter_in_its_instill_field(live):
    """`serve`'s OpenAI-shaped reply carries what `ask` reports (in-process: FastAPI's test client)."""
    from fastapi.testclient import TestClient

    from flows.serve import create_app
    from tasks.answer import Answerer

    with TestClient(create_app(Answerer(str(live), strategy="top1"))) as client:
        question = {"role": "user", "content": "Who is the chief engineer?"}
        reply = client.post("/v1/chat/completions", json={"model": "instrkb", "messages": [question]})
    assert reply.status_code == 200, reply.text
    extra = reply.json()["instill"]
    assert [i["document"] for i in extra["instructions"]] == ["docs:style.md"]
    assert [a["document"] for a in extra["adapters"]] == ["docs:alpha.md"]
