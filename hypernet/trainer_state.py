"""What both training loops (Doc-to-LoRA's ``hypernet.train``, Text-to-LoRA's ``hypernet.t2l_train``) keep
beside the network in a checkpoint: AdamW's state as safetensors (never a pickle) and the step + config as
JSON, written so that a crash never leaves a half-written checkpoint; which config changes a resume
allows; and their JSONL log."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"


def write_checkpoint(
    out_dir: Path, save_net: Callable[[Path], None], opt: torch.optim.Optimizer, meta: dict[str, Any]
) -> Path:
    """``out_dir/checkpoint``: the network (``save_net(folder)``), AdamW's state and ``meta`` (with the
    optimizer's param groups) as JSON. Written to ``checkpoint.tmp`` and renamed, so an interrupted
    write leaves the previous checkpoint's folder or this one's, never a mix."""
    tmp, final = out_dir / "checkpoint.tmp", out_dir / "checkpoint"
    shutil.rmtree(tmp, ignore_errors=True)
    save_net(tmp)
    meta = meta | {"param_groups": save_optimizer(opt, tmp)}
    (tmp / TRAINER_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def read_checkpoint_meta(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / TRAINER_FILE).read_text())


def changed_fields(saved: dict[str, Any], now: dict[str, Any], resumable: Iterable[str]) -> list[str]:
    """The config fields, other than ``resumable`` ones, whose value differs from the checkpoint's: a
    resume must refuse them. ``saved`` should be the saved config rebuilt through the config class, so
    fields added since the checkpoint was written take their defaults."""
    return sorted(k for k in now.keys() - set(resumable) if saved.get(k) != now[k])


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
