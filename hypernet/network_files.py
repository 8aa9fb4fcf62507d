"""How a hypernetwork (Doc-to-LoRA's ``hypernet.model``, Text-to-LoRA's ``hypernet.t2l``) is stored: its
weights as safetensors with the config in the file's metadata, so the one file rebuilds the network,
and a JSON beside it (config, sha256, how it was trained) for people and tools. No pickle anywhere."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from hypernet.base_model import sha256_files


def write_network(
    net: nn.Module, out_dir: Path, files: tuple[str, str], training: dict[str, Any] | None = None
) -> str:
    """Write ``files`` = (weights, JSON) for ``net`` (whose ``cfg`` is a dataclass); returns the sha256
    of the weights file, which carries the config too."""
    weights, meta_file = files
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = asdict(net.cfg)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(out_dir / weights), metadata={"config": json.dumps(config, sort_keys=True)})
    sha = sha256_files([out_dir / weights])
    meta = {"config": config, "sha256": sha, "training": training or {}}
    (out_dir / meta_file).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return sha


def read_network(
    ckpt_dir: Path, weights: str, what: str, error: type[Exception]
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The config and tensors of a network ``write_network`` stored; ``error`` names ``what`` is wrong."""
    path = Path(ckpt_dir) / weights
    if not path.is_file():
        raise error(f"no {what} checkpoint at {ckpt_dir}: {weights} is missing")
    try:
        with safe_open(str(path), framework="pt") as fh:
            config = json.loads((fh.metadata() or {})["config"])
        return config, load_file(str(path))
    except (KeyError, ValueError, OSError, SafetensorError) as exc:
        raise error(f"{what} checkpoint {path} is unreadable: {exc}") from exc


def fill_network(
    net: nn.Module, state: dict[str, Tensor], path: Path, what: str, error: type[Exception]
) -> None:
    """Load ``state`` into ``net``; a tensor set that does not match its config is ``error``."""
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise error(f"{what} checkpoint {path} does not match its config: {exc}") from exc
