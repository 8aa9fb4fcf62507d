"""Instruction documents: front matter, matching a suite behaviour, the gate, and `generate` on one file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hypernet.t2l import describe_to_lora
from tasks.instruction import (
    InstructionError,
    InstructionGateConfig,
    instruction_gate,
    instruction_text,
    matched_behaviour,
)
from tasks.settings import GeneratorConfig
from tests.fixtures.models import make_tiny_t2l

DOC = b"---\ntitle: style\ninstill: {kind: instruction}\n---\nAlways answer in one word.\n"


def test_front_matter_declares_an_instruction() -> None:
    assert instruction_text(DOC, "style.md") == "Always answer in one word."
    assert instruction_text(b"# Notes\nAlways answer in one word.\n", "n.md") is None
    assert instruction_text(b"---\ntitle: x\n---\nbody\n", "n.md") is None  # front matter of another kind
    with pytest.raises(InstructionError, match="no text"):
        instruction_text(b"---\ninstill: {kind: instruction}\n---\n\n", "empty.md")
    with pytest.raises(InstructionError, match="unknown instill kind"):
        instruction_text(b"---\ninstill: {kind: recipe}\n---\nx\n", "r.md")
    with pytest.raises(InstructionError, match="not valid YAML"):
        instruction_text(b"---\ninstill: [kind\n---\nx\n", "bad.md")


def test_a_suite_description_matches_its_behaviour_and_free_text_does_not() -> None:
    beh, score = matched_behaviour("Always answer in all capital letters.", 0.6)
    assert beh is not None and beh.name == "upper" and score >= 0.6
    assert matched_behaviour("Mention the refund policy number when relevant.", 0.6)[0] is None


def test_gate_fails_an_adapter_that_does_nothing_and_reports_its_metrics(tiny_base, tmp_path: Path) -> None:
    from hypernet.t2l import load_t2l

    net = load_t2l(make_tiny_t2l(tiny_base, tmp_path / "zero", 0.0))
    cfg = InstructionGateConfig(inputs=2, max_new_tokens=4, preservation_tokens=64)
    verdict = instruction_gate(tiny_base, describe_to_lora(tiny_base, net, "Be kind."), "Be kind.", cfg)
    assert not verdict["passed"] and verdict["metrics"]["effect"] == 0.0
    assert verdict["metrics"]["nll_increase"] == 0.0 and verdict["failures"][0].startswith("effect")
    upper = "Always answer in all capital letters."
    verdict = instruction_gate(tiny_base, describe_to_lora(tiny_base, net, upper), upper, cfg)
    assert verdict["metrics"]["matched_behaviour"] == "upper" and "compliance" in verdict["metrics"]


def test_generate_file_gives_an_instruction_document_a_t2l_adapter(
    tiny_base, tiny_model_dir, tmp_path, monkeypatch
):
    from hypernet.adapter import load_adapter
    from tasks.generate import generate_file
    from tasks.settings import InstructionsConfig, Settings

    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / "home"))
    ckpt = make_tiny_t2l(tiny_base, tmp_path / "t2l", 0.05)
    doc = tmp_path / "style.md"
    doc.write_bytes(DOC)
    cfg = GeneratorConfig(name="t2l", base_model=str(tiny_model_dir), options={"checkpoint": str(ckpt)})
    report = generate_file(Settings(), cfg, doc, tmp_path / "out")
    assert report["generator"] == "t2l" and "passed" in report["qa"]
    lineage = json.loads((tmp_path / "out" / "instill.json").read_text())
    assert lineage["kind"] == "instruction" and lineage["instruction"] == "Always answer in one word."
    assert lineage["qa"]["metrics"]["config"]["max_nll_increase"] == 0.3  # the default gate

    # a knowledge base's instructions section: its checkpoint (whatever the generator) and its gate
    how = InstructionsConfig(options={"checkpoint": str(ckpt)}, gate={"max_nll_increase": 0.0, "inputs": 2})
    report = generate_file(
        Settings(), GeneratorConfig(base_model=str(tiny_model_dir)), doc, tmp_path / "o2", how
    )
    metrics = report["qa"]["metrics"]
    assert report["generator"] == "t2l" and metrics["config"]["max_nll_increase"] == 0.0
    assert len(metrics["samples"]) == 2 and not report["qa"]["passed"], "no NLL increase allowed: fails"
    assert (
        lineage["generator"]["kind"] == "t2l" and lineage["qa"]["metrics"]["matched_behaviour"] == "one_word"
    )
    assert sorted(load_adapter(tmp_path / "out").target_names) == ["q_proj", "v_proj"]
