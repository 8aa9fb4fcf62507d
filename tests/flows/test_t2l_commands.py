"""`instill train-t2l`, `text-to-lora` and `eval-t2l` on the tiny Llama: what they write and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from mlflow import MlflowClient
from typer.testing import CliRunner

from hypernet.adapter import load_adapter, read_lineage
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
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _app() -> typer.Typer:
    from flows.cli import app

    return app


@pytest.fixture
def checkpoint(tiny_base, tmp_path: Path) -> Path:
    return make_tiny_t2l(tiny_base, tmp_path / "t2l", 0.05)


def test_text_to_lora_writes_a_peft_folder_with_lineage_to_the_text(
    home, tiny_model_dir, checkpoint, tmp_path
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
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    weights = load_adapter(tmp_path / "a")
    assert sorted(weights.target_names) == ["q_proj", "v_proj"] and weights.rank == 4
    lineage = read_lineage(tmp_path / "a")
    assert lineage["kind"] == "instruction" and lineage["description"] == "Answer in one word."
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["r"] == 4


def test_text_to_lora_errors_are_one_line(home, tiny_model_dir, checkpoint, tmp_path) -> None:
    base = ["--out", str(tmp_path / "a"), "--base", str(tiny_model_dir)]
    result = CliRunner().invoke(_app(), ["text-to-lora", "  ", *base, "--checkpoint", str(checkpoint)])
    assert result.exit_code == 2 and "description is empty" in result.output
    result = CliRunner().invoke(_app(), ["text-to-lora", "Be brief.", *base, "--checkpoint", str(tmp_path)])
    assert result.exit_code == 2 and "t2l.safetensors is missing" in result.output
    result = CliRunner().invoke(_app(), ["text-to-lora", "Be brief.", *base])
    assert result.exit_code == 2 and "no T2L checkpoint is shipped" in result.output
    assert "Traceback" not in result.output


def test_train_t2l_command_trains_and_logs_to_mlflow(prefect_server, home, tiny_model_dir, tmp_path) -> None:
    args = ["train-t2l", "--out", str(tmp_path / "run"), "--base", str(tiny_model_dir), *TINY_SETS]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "4 steps on cpu" in result.output
    summary = json.loads((tmp_path / "run" / "final" / "t2l.json").read_text())["training"]
    assert summary["steps"] == 4 and summary["command"].startswith("instill ")
    client = MlflowClient(tracking_uri=home)
    run = client.search_runs([client.get_experiment_by_name("instill-t2l").experiment_id])[0]
    assert run.info.status == "FINISHED" and "final/ce_unseen_desc" in run.data.metrics


def test_train_t2l_names_a_bad_override(home, tiny_model_dir, tmp_path) -> None:
    args = ["train-t2l", "--out", str(tmp_path / "run"), "--base", str(tiny_model_dir)]
    result = CliRunner().invoke(_app(), [*args, "--set", "stepz=3"])
    assert result.exit_code == 2 and "stepz" in result.output


def test_eval_t2l_writes_the_report(home, tiny_model_dir, checkpoint, tmp_path) -> None:
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
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert set(report["sets"]) == {"seen", "unseen"} and "oracle" not in report["sets"]["seen"]["rates"]
    assert "| unseen |" in (tmp_path / "e.md").read_text()
    bad = CliRunner().invoke(_app(), [*args, "--set=sen=[]"])
    assert bad.exit_code == 2 and "sen" in bad.output
