"""The `train-hypernet` flow: meta-train a Doc-to-LoRA hypernetwork, metrics streamed to MLflow.

Training itself is ``hypernet.train.train`` (resumable from ``out_dir/checkpoint``); this flow picks
the device (CUDA when present), loads the base model, opens one MLflow run and logs every record the
trainer emits through its callback: training records as ``train/*`` metrics at their step, held-out
evaluations as ``eval/*`` (nested figures flattened: ``eval/gap_closed/mean``), the final evaluation
as ``final/*``, and the checkpoint's sha256 as a tag. The checkpoint files stay in ``out_dir``;
MLflow gets its ``hypernet.json`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from prefect import flow

from tasks.registry import is_tracking_server
from tasks.settings import DEFAULT_BASE_MODEL, Settings

EXPERIMENT = "instill-hypernet"
_SKIP = {"time", "kind", "step", "stage", "from"}


def flatten(record: dict[str, Any], prefix: str) -> dict[str, float]:
    """Numeric leaves of a (nested) record as ``prefix/key/subkey`` metrics; booleans and text dropped."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _SKIP:
            continue
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out |= flatten(value, name)
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def params_of(config: dict[str, Any], prefix: str) -> dict[str, str]:
    """Every leaf of a nested config as ``prefix/key`` -> its JSON text (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= params_of(value, f"{prefix}/{key}")
        else:
            out[f"{prefix}/{key}"] = json.dumps(value)[:500]
    return out


class MlflowLogger:
    """The trainer's ``log`` callback: each record becomes metrics of one MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str, echo: bool = True) -> None:
        self.client, self.run_id, self.echo = client, run_id, echo
        self.last_step = 0

    def __call__(self, record: dict[str, Any]) -> None:
        kind = record.get("kind", "")
        step = int(record.get("step", self.last_step))
        self.last_step = step
        prefix = {"train": "train", "eval": "eval", "final": "final", "precompute": "precompute"}.get(kind)
        if kind == "final" and "sets" in record:  # one record per held-out set, as the evaluations
            for label, figures in record["sets"].items():
                self._log(figures, _set_prefix("final", label), step)
        elif prefix:
            self._log(record, _set_prefix(prefix, record.get("set")), step)
        if self.echo:
            print(json.dumps(record), flush=True)

    def _log(self, record: dict[str, Any], prefix: str, step: int) -> None:
        for name, value in flatten(record, prefix).items():
            self.client.log_metric(self.run_id, name, value, step=step)


def _set_prefix(prefix: str, label: str | None) -> str:
    """``eval/*`` for the synthetic set (the names earlier runs used), ``eval_real/*`` for real text."""
    return prefix if label in (None, "synthetic") else f"{prefix}_{label}"


def _experiment_id(client: MlflowClient, settings: Settings, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    if is_tracking_server(settings.tracking_uri):  # the server's --artifacts-destination (S3)
        return client.create_experiment(name)
    settings.artifact_root.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(name, (settings.artifact_root / name).as_uri())


def start_training_run(
    client: MlflowClient,
    settings: Settings,
    experiment: str,
    run_name: str,
    base: Any,  # hypernet.base_model.BaseModel (imported lazily: torch)
    device: str,
    config: dict[str, Any],
) -> str:
    """An MLflow run for a training flow, tagged with the base model and device, ``config`` as params."""
    run = client.create_run(
        _experiment_id(client, settings, experiment),
        run_name=run_name,
        tags={"base_model_id": base.model_id, "base_model_sha256": base.weights_sha256, "device": device},
    )
    run_id = run.info.run_id
    for key, value in params_of(config, "cfg").items():
        client.log_param(run_id, key, value)
    return run_id


def finish_training_run(
    client: MlflowClient,
    run_id: str,
    training: Callable[[], Path],
    sha_of: Callable[[Path], str],
    summary_file: str,
    artifacts: Sequence[Path] = (),
) -> tuple[Path, str, dict[str, Any]]:
    """Run ``training`` inside the MLflow run (a failure marks it FAILED), then tag the checkpoint's
    sha256, log ``summary_file`` and ``artifacts`` and close the run.

    Returns (final checkpoint folder, its sha256, the "training" section of ``summary_file``)."""
    try:
        final = training()
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    sha = sha_of(final)
    client.set_tag(run_id, "checkpoint_sha256", sha)
    for path in (final / summary_file, *artifacts):
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return final, sha, json.loads((final / summary_file).read_text())["training"]


@flow(name="train-hypernet")
def train_hypernet(
    out_dir: str,
    base_model: str = DEFAULT_BASE_MODEL,
    options: dict[str, Any] | None = None,
    minutes: float | None = None,
    steps: int | None = None,
    device: str | None = None,
    threads: int = 1,
    experiment: str = EXPERIMENT,
    echo: bool = True,
) -> dict[str, Any]:
    """Train (or resume) a hypernetwork into ``out_dir``; returns the final checkpoint and its figures.

    ``options`` are ``TrainConfig`` fields (nested ``data``/``net`` as dicts); ``device`` defaults to
    CUDA when present, else the settings' device, else CPU.
    """
    import torch

    from hypernet.model import checkpoint_sha256
    from hypernet.train import TrainConfig, train
    from tasks.runtime import load_base

    settings = Settings()
    device = device or ("cuda" if torch.cuda.is_available() else settings.device or "cpu")
    fields = dict(options or {}) | {"max_minutes": minutes} | ({"steps": steps} if steps else {})
    cfg = TrainConfig(**fields)
    base = load_base(settings, base_model, device=device, threads=threads)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    run_id = start_training_run(client, settings, experiment, Path(out_dir).name, base, device, cfg.to_dict())
    client.log_dict(run_id, cfg.to_dict(), "train_config.json")
    final, sha, summary = finish_training_run(
        client, run_id, lambda: train(cfg, base, Path(out_dir), MlflowLogger(client, run_id, echo)),
        checkpoint_sha256, "hypernet.json", [Path(out_dir) / "metrics.jsonl"],
    )  # fmt: skip
    return {
        "final": str(final),
        "checkpoint_sha256": sha,
        "mlflow_run_id": run_id,
        "device": device,
        "steps": summary["steps"],
        "heldout_eval": summary["heldout_eval"],
    }
