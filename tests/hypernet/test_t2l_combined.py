"""The instruction + knowledge combination measurement on the tiny Llama: every condition scored, the
instruction's scale a condition of its own, the report's table."""

from __future__ import annotations

import pytest
import torch

from hypernet.lora import LoraWeights, target_linears
from hypernet.probes import sentence_probes
from hypernet.t2l import load_t2l
from hypernet.t2l_combined import CombinedEvalConfig, run_combined_eval, to_markdown

TEXT = (
    "The on-call engineer answers pages within fifteen minutes of the alert. "
    "Escalation goes to the team lead after thirty minutes without an acknowledgement. "
    "Every incident gets a written review within five working days of its resolution."
)


def _knowledge(tiny_base) -> LoraWeights:
    g = torch.Generator().manual_seed(0)
    linears = target_linears(tiny_base.model, "down_proj")
    A = {p: torch.randn(4, m.in_features, generator=g) * 0.05 for p, m in linears.items()}
    B = {p: torch.randn(m.out_features, 4, generator=g) * 0.05 for p, m in linears.items()}
    return LoraWeights(A, B, 2.0)


def test_combined_eval_scores_every_condition_and_each_instruction_scale(tiny_base, tiny_t2l_dir) -> None:
    cfg = CombinedEvalConfig(
        behaviours=("upper", "one_word"),
        descriptions=1,
        inputs=2,
        max_new_tokens=6,
        instruction_scales=(1.0, 0.5),
    )
    logged: list[dict] = []
    probes = sentence_probes(TEXT, max_probes=3)
    result = run_combined_eval(
        tiny_base, load_t2l(tiny_t2l_dir), _knowledge(tiny_base), probes, cfg, logged.append
    )
    conds = ["base", "knowledge", "instruction", "together", "together@0.5"]
    assert list(result["compliance"]["rates"]) == conds and [r["behaviour"] for r in logged] == [
        "upper",
        "one_word",
    ]
    assert all(r["n"] == 4 and 0 <= r["mean"] <= 1 for r in result["compliance"]["rates"].values())
    assert set(result["compliance"]["together_minus_instruction"]) == {"together", "together@0.5"}
    nll = result["knowledge_nll"]
    assert list(nll) == conds and nll["knowledge"] != nll["base"]
    # the instruction's update at half scale moves the answer NLL less than at full scale
    assert abs(nll["together@0.5"] - nll["knowledge"]) < abs(nll["together"] - nll["knowledge"])
    table = to_markdown(result)
    assert "| compliance [95% CI] |" in table and "together@0.5 minus instruction alone" in table


def test_instruction_scales_must_be_positive() -> None:
    with pytest.raises(ValueError, match="instruction_scales"):
        CombinedEvalConfig(instruction_scales=(0.0,))
