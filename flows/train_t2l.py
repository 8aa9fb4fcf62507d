"""The `train-t2l` flow: SFT of the Text-to-LoRA hypernetwork, metrics streamed to MLflow.

Training itself is ``hypernet.t2l_train.train_t2l`` (resumable from ``out_dir/checkpoint``); this flow
picks the device, loads the base model, opens one MLflow run (experiment ``instill-t2l``) and logs every
record the trainer emits, as ``flows.train`` does for Doc-to-LoRA.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from prefect import flow

from flows.train import MlflowLogger, finish_training_run, start_training_run
from tasks.settings import DEFAULT_BASE_MODEL, Settings

EXPERIMENT = "instill-t2l"


@flow(name="train-t2l")
def train_t2l(
    out_dir: str,
    base_model: str = DEFAULT_BASE_MODEL,
    options: dict[str, Any] | None = None,
    device: str | None = None,
    threads: int = 1,
    experiment: str = EXPERIMENT,
    echo: bool = True,
) -> dict[str, Any]:
    """Train (or resume) a T2L hypernetwork into ``out_dir``; ``options`` are ``T2LTrainConfig`` fields."""
    import torch

    from hypernet.base_model import sha256_files
    from hypernet.t2l import WEIGHTS_FILE
    from hypernet.t2l_train import T2LTrainConfig
    from hypernet.t2l_train import train_t2l as train
    from tasks.runtime import load_base

    settings = Settings()
    device = device or ("cuda" if torch.cuda.is_available() else settings.device or "cpu")
    cfg = T2LTrainConfig(**(options or {}))
    base = load_base(settings, base_model, device=device, threads=threads)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    run_id = start_training_run(client, settings, experiment, Path(out_dir).name, base, device, cfg.to_dict())
    command = "instill " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    final, sha, summary = finish_training_run(
        client, run_id,
        lambda: train(cfg, base, Path(out_dir), MlflowLogger(client, run_id, echo), command=command),
        lambda folder: sha256_files([folder / WEIGHTS_FILE]), "t2l.json",
    )  # fmt: skip
    return {
        "final": str(final),
        "checkpoint_sha256": sha,
        "mlflow_run_id": run_id,
        "device": device,
        "steps": summary["steps"],
        "heldout_ce": summary["heldout_ce"],
    }
