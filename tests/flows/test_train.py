"""The `train-hypernet` flow and command on the tiny Llama: a checkpoint comes out, MLflow gets the
metrics at their steps and the checkpoint's sha256; bad overrides are named."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from mlflow import MlflowClient

from flows.train import EXPERIMENT, flatten
from hypernet.model import checkpoint_sha256, load_hypernet
from hypernet.train import parse_overrides
from tests.fixtures.hypernet import TINY_NET
from tests.fixtures.kb import instill

OPTIONS = {
    "data": {"n_train": 16, "n_heldout": 4, "max_level": 2},
    "net": TINY_NET,
    "bias_steps": 2,
    "batch_docs": 4,
    "lr": 0.01,
    "warmup": 1,
    "log_every": 2,
    "eval_every": 3,
    "eval_docs": 4,
    "em_docs": 0,
}


def test_flow_trains_and_streams_metrics_to_mlflow(
    prefect_server, mlflow_home, tiny_model_dir, tmp_path
) -> None:
    from flows.train import train_hypernet

    result = train_hypernet(str(tmp_path / "run"), str(tiny_model_dir), OPTIONS, steps=6, echo=False)
    final = Path(result["final"])
    assert result["checkpoint_sha256"] == checkpoint_sha256(final) and result["device"] == "cpu"
    assert result["steps"] == 6 and load_hypernet(final).cfg.rank == TINY_NET["rank"]
    client = MlflowClient(tracking_uri=mlflow_home)
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["checkpoint_sha256"] == result["checkpoint_sha256"]
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in losses) == [2, 4, 6]
    gaps = client.get_metric_history(run.info.run_id, "eval/gap_closed/mean")
    assert sorted(m.step for m in gaps) == [0, 3, 6]
    assert "final/gap_closed_wrong_doc" in run.data.metrics and run.data.params["cfg/steps"] == "6"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"hypernet.json", "metrics.jsonl", "train_config.json"} <= artifacts


def test_command_trains_with_overrides(prefect_server, mlflow_home, tiny_model_dir, tmp_path) -> None:
    sets = [f"--set=data.{k}={v}" for k, v in OPTIONS["data"].items()]
    sets += [f"--set=net.{k}={v}" for k, v in TINY_NET.items()]
    sets += ["--set=bias_steps=1", "--set=batch_docs=2", "--set=eval_every=0", "--set=em_docs=0"]
    args = ["train-hypernet", "--out", str(tmp_path / "run"), "--base", str(tiny_model_dir), "--steps", "3"]
    code, output = instill(*args + sets)
    assert code == 0, output
    assert "final checkpoint" in output and "3 steps on cpu" in output
    assert json.loads((tmp_path / "run" / "final" / "hypernet.json").read_text())["training"]["steps"] == 3


def test_command_names_a_bad_override(mlflow_home, tiny_model_dir, tmp_path) -> None:
    args = ["train-hypernet", "--out", str(tmp_path / "run"), "--base", str(tiny_model_dir)]
    code, output = instill(*args, "--set", "stepz=3")
    assert code == 2 and "stepz" in output
    code, output = instill(*args, "--set", "steps")
    assert code == 2 and "expected KEY=VALUE" in output


def test_flatten_keeps_numeric_leaves_under_slashed_names() -> None:
    record = {"kind": "eval", "step": 3, "gap_closed": {"mean": 0.5, "ci_low": 0.1}, "ok": True, "x": "y"}
    assert flatten(record, "eval") == {"eval/gap_closed/mean": 0.5, "eval/gap_closed/ci_low": 0.1}
    assert parse_overrides(["data.n_train=8", "lr=0.1", "cache_dir=runs/c"]) == {
        "data": {"n_train": 8},
        "lr": 0.1,
        "cache_dir": "runs/c",
    }


def test_real_text_and_a_warm_start_join_a_run(tiny_base, tmp_path: Path) -> None:
    from hypernet.train import TrainConfig, train

    # the tiny tokenizer spends many tokens per word: chunks wide enough for whole corpus documents
    options = OPTIONS | {"net": TINY_NET | {"chunk_tokens": 1024}, "eval_every": 0}
    first = TrainConfig(**(options | {"steps": 3}))
    start = train(first, tiny_base, tmp_path / "first", lambda r: None)
    records: list[dict] = []
    cfg = TrainConfig(**(options | {"steps": 4, "bias_steps": 0}), real_docs=6)
    cfg.init_from = str(start)
    train(cfg, tiny_base, tmp_path / "second", records.append)
    assert records[0] == {"kind": "init", "from": str(start), "time": records[0]["time"]}
    data = next(r for r in records if r["kind"] == "data")
    assert data["synthetic"] == 16 and data["real"] == 6 and data["heldout_synthetic"] == 4
    precompute = [r for r in records if r["kind"] == "precompute"][-1]
    assert precompute["of"] == 4  # held-out only: training documents are read when a batch needs them
    before = load_hypernet(start).state_dict()
    after = load_hypernet(tmp_path / "second" / "final").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in ("bias_A", "bias_B"))  # frozen without stage 1
    assert not torch.equal(before["head_A"], after["head_A"])


def test_contrastive_partner_is_a_document_of_the_same_kind() -> None:
    from hypernet.data import DataConfig, make_split, text_document
    from hypernet.train import shuffle_partners

    synthetic = make_split(DataConfig(n_train=3), "train")
    real = [
        text_document(f"r{i}", "One two three four five six seven. Eight nine ten eleven twelve.")
        for i in range(2)
    ]
    docs = [synthetic[0], real[0], synthetic[1], real[1], synthetic[2]]
    assert shuffle_partners(docs).tolist() == [2, 3, 4, 1, 0]
    assert shuffle_partners(synthetic).tolist() == [1, 2, 0]  # one kind: the next document
    assert shuffle_partners([synthetic[0], real[0]]).tolist() == [1, 0]  # alone of its kind: the next
