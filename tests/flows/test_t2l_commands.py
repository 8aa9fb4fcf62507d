"""`instill train-t2l`, `text-to-lora` and `eval-t2l` on the tiny Llama: what they write and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from hypernet.adapter import load_adapter, read_lineage
from tests.fixtures.kb import instill
from tests.fixtures.models import make_tiny_t2l

TINY_SETS = [
    "--set=steps=4",
    "--set=batch_tasks=2",
    "--set=latent=32",
    "--set=rank=4",
    "--set=eval_every=0",
    "--set=log_every=2",
    "--set=max_target_tokens=8",
]


@pytest.fixture
def checkpoint(tiny_base, tmp_path: Path) -> Path:
    return make_tiny_t2l(tiny_base, tmp_path / "t2l", 0.05)


def test_text_to_lora_writes_a_peft_folder_with_lineage_to_the_text(
    mlflow_home, tiny_model_dir, checkpoint, tmp_path
) -> None:
    args = [
        "text-to-lora",
        "Answer in one word.",
        "--out",
        str(tmp_path / "a"),
        "--base",
        str(tiny_model_dir),
        "--checkpoint",
        str(checkpoint),
    ]
    code, output = instill(*args)
    assert code == 0, output
    weights = load_adapter(tmp_path / "a")
    assert sorted(weights.target_names) == ["q_proj", "v_proj"] and weights.rank == 4
    lineage = read_lineage(tmp_path / "a")
    assert lineage["kind"] == "instruction" and lineage["description"] == "Answer in one word."
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["r"] == 4


def test_text_to_lora_errors_are_one_line(mlflow_home, tiny_model_dir, checkpoint, tmp_path) -> None:
    base = ["--out", str(tmp_path / "a"), "--base", str(tiny_model_dir)]
    code, output = instill("text-to-lora", "  ", *base, "--checkpoint", str(checkpoint))
    assert code == 2 and "description is empty" in output
    code, output = instill("text-to-lora", "Be brief.", *base, "--checkpoint", str(tmp_path))
    assert code == 2 and "t2l.safetensors is missing" in output
    code, output = instill("text-to-lora", "Be brief.", *base)
    assert code == 2 and "no T2L checkpoint is shipped" in output
    assert "Traceback" not in output


def test_train_t2l_command_trains_and_logs_to_mlflow(
    prefect_server, mlflow_home, tiny_model_dir, tmp_path
) -> None:
    args = ["train-t2l", "--out", str(tmp_path / "run"), "--base", str(tiny_model_dir), *TINY_SETS]
    code, output = instill(*args)
    assert code == 0, output
    assert "4 steps on cpu" in output
    summary = json.loads((tmp_path / "run" / "final" / "t2l.json").read_text())["training"]
    assert summary["steps"] == 4 and summary["command"].startswith("instill ")
    client = MlflowClient(tracking_uri=mlflow_home)
    run = client.search_runs([client.get_experiment_by_name("instill-t2l").experiment_id])[0]
    assert run.info.status == "FINISHED" and "final/ce_unseen_desc" in run.data.metrics


def test_train_t2l_names_a_bad_override(mlflow_home, tiny_model_dir, tmp_path) -> None:
    args = ["train-t2l", "--out", str(tmp_path / "run"), "--base", str(tiny_model_dir)]
    code, output = instill(*args, "--set", "stepz=3")
    assert code == 2 and "stepz" in output


def test_eval_t2l_writes_the_report(mlflow_home, tiny_model_dir, checkpoint, tmp_path) -> None:
    sets = [
        'seen=["upper"]',
        'unseen=["one_word+upper"]',
        "descriptions=1",
        "inputs=1",
        "oracles=[]",
        "probe_behaviours=2",
        "preservation_adapters=1",
        "preservation_tokens=32",
        "max_new_tokens=4",
    ]
    args = [
        "eval-t2l",
        "--json",
        str(tmp_path / "e.json"),
        "--base",
        str(tiny_model_dir),
        "--checkpoint",
        str(checkpoint),
    ] + [f"--set={s}" for s in sets]
    code, output = instill(*args)
    assert code == 0, output
    report = json.loads((tmp_path / "e.json").read_text())
    assert set(report["sets"]) == {"seen", "unseen"} and "oracle" not in report["sets"]["seen"]["rates"]
    assert "| unseen |" in (tmp_path / "e.md").read_text()
    bad_code, bad_output = instill(*args, "--set=sen=[]")
    assert bad_code == 2 and "sen" in bad_output
