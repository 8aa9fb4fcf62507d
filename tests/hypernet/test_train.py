"""Meta-training on the tiny Llama: the loss falls, resuming is exact, checkpoints hold no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hypernet.data import DataConfig, make_split
from hypernet.features import FeatureEncoder, pad_features
from hypernet.metrics import per_group_mean
from hypernet.model import load_hypernet
from hypernet.teacher import answer_logprobs, make_batch
from hypernet.train import TrainConfig, TrainError, lr_at, parse_args, sample_batch, setup, train
from hypernet.validate import CONDITIONS

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
    final_record = records[-1]["sets"]["synthetic"]
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
    assert [r["kind"] for r in second[:2]] == ["resume", "data"]
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


REAL_TEXTS = [
    "The archive server of Quillmoor listens on port 7431 and keeps 12 copies. It was released in 2019 by "
    "the Varnholt Group. The option --keep-days sets how long snapshots stay; the default is 45 days.",
    "Brisket mode is a replication scheme in which the primary ships pages to Tolvern nodes every 90 "
    "seconds. The setting max_page_lag limits the delay. Version 4.2 added the Ostrava scheduler.",
    "The lantern protocol was introduced in 2011 by Mireille Okonkwo. Each frame carries 64 bytes of "
    "header and the function send_frame() retries 3 times before the link is marked as down.",
    "Harbour tickets expire after 18 months. The Kestrel Desk answers requests within 4 hours, and the "
    "form HT-7 is required for claims above 2,500 euros since March 2022.",
]


def write_corpus(root: Path, texts: list[str], heldout: int = 2) -> Path:
    """A package corpus in the format of ``instill corpus build`` (documents.jsonl + manifest.json)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [
        {"doc_id": f"pkg{i % 2}:f{i}.html#0", "package": "held" if i < heldout else "pkg",
         "source_file": f"f{i}.html", "title": "", "text": t, "n_tokens": len(t.split()),
         "split": "heldout" if i < heldout else "train"}
        for i, t in enumerate(texts)
    ]  # fmt: skip
    (root / "documents.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "manifest.json").write_text(json.dumps({"format": 1, "documents": len(rows)}))
    return root


def test_real_documents_from_the_corpus_are_mixed_into_batches_and_validated(tiny_base, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", REAL_TEXTS + REAL_TEXTS[2:], heldout=2)
    cfg = _cfg(steps=6, bias_steps=2, corpus=str(corpus), real_docs=4, real_heldout=2, eval_every=3,
               eval_docs=4, net=NET | {"chunk_tokens": 32}, max_chunks=4)  # fmt: skip
    records: list[dict] = []
    final = train(cfg, tiny_base, tmp_path / "run", records.append)
    sets = {r["set"] for r in records if r["kind"] == "eval"}
    assert sets == {"synthetic", "real"}
    real_eval = records[-1]["sets"]["real"]
    assert real_eval["docs"] == 2 and set(real_eval["specificity_by_type"]) - {"continuation"}
    summary = json.loads((final / "hypernet.json").read_text())["training"]
    assert summary["corpus_manifest_sha256"] and summary["heldout_eval_by_set"]["real"]["docs"] == 2
    train_records = [r for r in records if r["kind"] == "train"]
    assert all(r["sec_per_doc_step"] > 0 and "sec_teacher" in r for r in train_records)


def test_batches_hold_the_configured_share_of_real_documents(tiny_base, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", REAL_TEXTS * 2, heldout=2)
    cfg = _cfg(corpus=str(corpus), real_docs=6, real_heldout=2, real_fraction=0.5, max_chunks=8)
    run = setup(cfg, tiny_base, tmp_path / "run", lambda r: None)
    batch = sample_batch(run, 7)
    assert sum(d.level == 0 for d in batch) == 2 and len(batch) == 4
    assert all(any(q.fact != "continuation" for q in d.questions) for d in run.real)
    assert sample_batch(run, 7) == batch  # a pure function of (seed, step)


def test_resuming_on_another_corpus_is_refused(tiny_base, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", REAL_TEXTS, heldout=1)
    cfg = _cfg(steps=4, bias_steps=1, corpus=str(corpus), real_docs=2, real_heldout=1, max_chunks=8)
    train(TrainConfig(**(cfg.to_dict() | {"stop_at_step": 2})), tiny_base, tmp_path / "run", lambda r: None)
    write_corpus(tmp_path / "corpus", list(reversed(REAL_TEXTS)), heldout=1)
    (tmp_path / "corpus" / "manifest.json").write_text(json.dumps({"format": 1, "changed": True}))
    with pytest.raises(TrainError, match="another corpus"):
        train(cfg, tiny_base, tmp_path / "run", lambda r: None)
