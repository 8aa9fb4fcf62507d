"""The T2L evaluation on the tiny Llama: every condition scored, CIs and controls present, oracles reused."""

from __future__ import annotations

from pathlib import Path

import torch

from hypernet.t2l import T2LConfig, T2LHypernet
from hypernet.t2l_eval import T2LEvalConfig, examples, run_t2l_eval, summarise, to_markdown

SMALL = T2LEvalConfig(
    seen=("upper", "one_word"),
    unseen=("one_word+upper",),
    descriptions=1,
    inputs=2,
    probe_behaviours=3,
    max_new_tokens=6,
    oracles=("upper",),
    oracle_steps=2,
    preservation_adapters=1,
    preservation_tokens=64,
)


def test_examples_use_heldout_descriptions_and_another_behaviours_control() -> None:
    exs = examples(T2LEvalConfig(descriptions=2, inputs=3), "seen")  # 12 behaviours x 2 x 3
    assert len(exs) == 12 * 6
    for e in exs:
        assert e.description in e.behaviour.descriptions("heldout")
        assert e.random_description not in e.behaviour.descriptions("heldout")
        assert e.item in e.behaviour.inputs("heldout")


def test_summary_pairs_differences_and_the_oracle_ratio() -> None:
    exs = examples(SMALL, "seen")
    scores = {
        "base": [0, 0, 0, 0],
        "prompt": [1, 0, 0, 0],
        "t2l": [1, 1, 1, 0],
        "random": [0, 0, 1, 0],
        "oracle": [1, 1, None, None],
    }
    s = summarise(exs, scores)
    assert s["rates"]["t2l"]["mean"] == 0.75 and s["rates"]["oracle"]["n"] == 2
    assert s["differences"]["t2l_minus_base"]["mean"] == 0.75
    assert s["oracle_behaviours"]["ratio_t2l_over_oracle"] == 1.0


def test_run_scores_every_condition_and_reuses_trained_oracles(tiny_base, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = T2LHypernet(T2LConfig.from_base_model(tiny_base.model, latent=32, rank=4))
    cfg = T2LEvalConfig(**{**SMALL.__dict__, "oracle_dir": str(tmp_path / "oracles")})
    logs: list[dict] = []
    result = run_t2l_eval(tiny_base, net, cfg, logs.append)
    seen = result["sets"]["seen"]
    assert set(seen["rates"]) == {"base", "prompt", "t2l", "random", "oracle"}
    assert all(0 <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= 1 for r in seen["rates"].values())
    assert len(seen["samples"]) == 4 and "oracle" in seen["samples"][0]
    assert result["preservation"]["nll_increase"] == 0.0  # an untrained network is the identity
    assert "| seen |" in to_markdown(result) and 0 <= result["encoder_probe"]["layer_2"] <= 1
    assert [r["behaviour"] for r in logs if r["kind"] == "oracle"] == ["upper"]
    again: list[dict] = []
    run_t2l_eval(tiny_base, net, cfg, again.append)
    assert not [r for r in again if r["kind"] == "oracle"], "a trained oracle is loaded, not retrained"
