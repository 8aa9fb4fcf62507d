"""Meta-training on the tiny Llama: the loss falls, resuming is exact, checkpoints hold no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hypernet.data import DataConfig, make_split
from hypernet.features import FeatureEncoder, pad_features
from hypernet.model import load_hypernet
from hypernet.train import (
    CONDITIONS,
    TrainConfig,
    TrainError,
    answer_logprobs,
    lr_at,
    make_batch,
    parse_args,
    per_group_mean,
    train,
)

NET = {"d": 32, "n_latents": 4, "n_blocks": 1, "rank": 4, "bias_rank": 4}


def _cfg(**overrides) -> TrainConfig:
    options = {
        "data": DataConfig(n_train=24, n_heldout=6, max_level=2),
        "net": NET,
        "steps": 40,
        "bias_steps": 10,
        "batch_docs": 4,
        "lr": 1e-2,
        "warmup": 2,
        "log_every": 1,
        "eval_every": 0,
        "em_docs": 0,
        "ckpt_every": 100,
    }
    return TrainConfig(**(options | overrides))


def _mean_ce(tiny_base, net, docs) -> float:
    """Gold-answer CE of ``docs`` with their own generated adapters (``net=None``: the base model)."""
    batch = make_batch(tiny_base.tokenizer, docs)
    adapter = None
    if net is not None:
        encoder = FeatureEncoder(tiny_base)
        A, B = net(*pad_features([encoder.encode(d.text)[0] for d in docs]))
        adapter = net.batch_adapter(A, B, batch.doc)
    with torch.no_grad():
        nll = -answer_logprobs(tiny_base.model, batch, adapter).gather(1, batch.target[:, None])[:, 0]
    return per_group_mean(nll, batch.doc[batch.seq], len(docs)).mean().item()


def test_training_lowers_the_answer_loss_on_training_documents(tiny_base, tmp_path):
    records = []
    cfg = _cfg(eval_every=20, eval_docs=6, em_docs=2)
    final = train(cfg, tiny_base, tmp_path / "run", records.append)
    docs = make_split(cfg.data, "train")[:8]
    before, after = _mean_ce(tiny_base, None, docs), _mean_ce(tiny_base, load_hypernet(final), docs)
    assert after < before - 0.5, (before, after)
    kinds = [r["kind"] for r in records]
    assert kinds.count("train") == 40 and kinds.count("eval") == 3 and kinds[-1] == "final"
    final_record = records[-1]
    assert {f"nll_{c}" for c in CONDITIONS} <= final_record.keys()
    assert {"mean", "ci_low", "ci_high"} == final_record["gap_closed"].keys()
    assert set(final_record["exact_match"]) == {"base", "own", "wrong", "in_context", "questions"}
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in logged] == kinds
    assert json.loads((final / "hypernet.json").read_text())["training"]["steps"] == 40


def test_resuming_from_a_checkpoint_replays_the_identical_run(tiny_base, tmp_path):
    cfg = _cfg(steps=8, bias_steps=3)
    straight: list[dict] = []
    train(cfg, tiny_base, tmp_path / "straight", straight.append)
    first: list[dict] = []
    train(_cfg(steps=8, bias_steps=3, stop_at_step=5), tiny_base, tmp_path / "split", first.append)
    ckpt = tmp_path / "split" / "checkpoint"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "hypernet.json",
        "hypernet.safetensors",
        "optimizer.safetensors",
        "trainer.json",
    ]
    second: list[dict] = []
    final = train(cfg, tiny_base, tmp_path / "split", second.append)
    assert second[0] == {"kind": "resume", "step": 5, "from": str(ckpt), "time": second[0]["time"]}
    losses = {r["step"]: r["loss"] for r in straight if r["kind"] == "train"}
    resumed = {r["step"]: r["loss"] for r in second if r["kind"] == "train"}
    assert sorted(resumed) == [6, 7, 8]
    assert all(resumed[s] == losses[s] for s in resumed), (resumed, losses)
    a, b = load_hypernet(tmp_path / "straight" / "final"), load_hypernet(final)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_resuming_with_a_different_training_config_is_refused(tiny_base, tmp_path):
    train(_cfg(steps=4, bias_steps=1, stop_at_step=2), tiny_base, tmp_path, lambda r: None)
    with pytest.raises(TrainError, match="lr"):
        train(_cfg(steps=4, bias_steps=1, lr=5e-3), tiny_base, tmp_path, lambda r: None)


def test_learning_rate_warms_up_then_decays_within_each_stage():
    cfg = TrainConfig(steps=100, bias_steps=20, warmup=5, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(0.2) and lr_at(cfg, 4) == pytest.approx(1.0)
    assert lr_at(cfg, 19) < lr_at(cfg, 5)
    assert lr_at(cfg, 20) == pytest.approx(0.2)  # stage 2 warms up again
    assert lr_at(cfg, 99) == pytest.approx(0.1, abs=1e-3)


def test_command_line_options_reach_nested_config_fields(tmp_path: Path):
    argv = ["--out", str(tmp_path), "--minutes", "2.5", "--steps", "50"]
    args, cfg = parse_args([*argv, "--set", "data.n_train=80", "--set", "w_shared=0"])
    assert args.out == tmp_path and cfg.max_minutes == 2.5 and cfg.steps == 50
    assert cfg.data.n_train == 80 and cfg.w_shared == 0
