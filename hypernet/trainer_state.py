"""What both training loops (Doc-to-LoRA's ``hypernet.train``, Text-to-LoRA's ``hypernet.t2l_train``) keep
beside the network in a checkpoint: AdamW's state as safetensors (never a pickle); and their JSONL log."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

OPTIMIZER_FILE = "optimizer.safetensors"


def save_optimizer(opt: torch.optim.Optimizer, folder: Path) -> list[dict[str, Any]]:
    """Write the optimizer's tensors to ``folder``; returns its param groups (plain values) for the JSON."""
    state = opt.state_dict()
    tensors = {f"{i}.{k}": v.contiguous() for i, s in state["state"].items() for k, v in s.items()}
    save_file(tensors, str(folder / OPTIMIZER_FILE))
    return state["param_groups"]


def load_optimizer(opt: torch.optim.Optimizer, folder: Path, param_groups: list[dict[str, Any]]) -> None:
    """Restore what ``save_optimizer`` wrote, with the param groups read back from the JSON."""
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in load_file(str(folder / OPTIMIZER_FILE)).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": param_groups})


def jsonl_logger(path: Path, log: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """Append every record to ``path`` (with a timestamp) and pass it on to ``log``."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def emit(record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 1), **record}
        with path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        log(record)

    return emit
