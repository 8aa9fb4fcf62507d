"""The adapter folder: the contract with every server.

A folder holds PEFT's two files, ``adapter_config.json`` and ``adapter_model.safetensors`` (key names
``base_model.model.<module path>.lora_A.weight``), so ``PeftModel.from_pretrained``, vLLM
``--lora-modules`` and LoRAX load it unchanged, plus ``instill.json``, the lineage sidecar servers ignore.
A module whose rank ``apply_together`` zero-padded (a document's memory on five layers beside the
network's adapter on all of them) is saved at its own rank, named in PEFT's ``rank_pattern`` and
``alpha_pattern`` with the same scaling everywhere, and padded again on loading.
The adapter's identity (its sha256) covers the two PEFT files only, because the sidecar later gains QA
verdicts. Weights are read with safetensors only, never with pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hypernet.lora import LoraWeights, padded_to_one_rank

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LINEAGE_FILE = "instill.json"
_PREFIX = "base_model.model."
_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B"}
Factors = tuple[torch.Tensor, torch.Tensor]  # one module's A [r, d_in] and B [d_out, r]


class AdapterError(Exception):
    """An adapter folder is missing, incomplete or not a plain LoRA; the message names the folder."""


def save_adapter(weights: LoraWeights, out_dir: Path, base_model_name_or_path: str, lineage: dict) -> str:
    """Write the adapter folder atomically and return its sha256 (see ``adapter_sha256``).

    Args:
        weights: one unbatched adapter (``A[path]`` is ``[r, d_in]``).
        out_dir: the folder; an existing one is replaced only once the new one is complete.
        base_model_name_or_path: recorded in ``adapter_config.json`` for servers.
        lineage: written as given to ``instill.json``.
    """
    out_dir = Path(out_dir)
    batched = [p for p, a in weights.A.items() if a.dim() != 2]
    if batched:
        raise AdapterError(f"adapter for {out_dir}: batched weights cannot be saved (module {batched[0]})")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        factors = _unpadded(weights)
        (tmp / CONFIG_FILE).write_text(_json(peft_config(weights, base_model_name_or_path, factors)))
        save_file(_peft_state_dict(factors), tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        (tmp / LINEAGE_FILE).write_text(_json(lineage))
        os.chmod(tmp, 0o755)
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return adapter_sha256(out_dir)


def peft_config(
    weights: LoraWeights, base_model_name_or_path: str, factors: dict[str, Factors]
) -> dict[str, Any]:
    """The ``adapter_config.json`` of a plain LoRA saved as ``factors`` (``_unpadded(weights)``); PEFT's
    scaling is ``lora_alpha / r``. When the factors have several ranks, ``r`` is the commonest and the
    others are in ``rank_pattern`` and ``alpha_pattern`` (full module paths), each alpha its rank times
    the one scaling."""
    ranks = {p: a.shape[-2] for p, (a, _) in factors.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    other = {p: k for p, k in ranks.items() if k != r}
    patterns = {
        "rank_pattern": other,
        "alpha_pattern": {p: float(weights.scaling) * k for p, k in other.items()},
    }
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": float(weights.scaling) * r,
        **(patterns if other else {}),
        "target_modules": weights.target_names,
        "bias": "none",
        "lora_dropout": 0.0,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
    }


def load_adapter(adapter_dir: Path) -> LoraWeights:
    """Read an adapter folder (ours or any plain PEFT LoRA saved as safetensors) back into LoraWeights."""
    adapter_dir = Path(adapter_dir)
    config = _read_json(adapter_dir / CONFIG_FILE, adapter_dir)
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        raise AdapterError(f"adapter {adapter_dir}: only plain LoRA is supported (peft_type LORA, no DoRA)")
    if not (adapter_dir / WEIGHTS_FILE).is_file():
        raise AdapterError(f"adapter {adapter_dir}: {WEIGHTS_FILE} is missing (pickled .bin is refused)")
    A: dict[str, torch.Tensor] = {}
    B: dict[str, torch.Tensor] = {}
    for key, tensor in load_file(adapter_dir / WEIGHTS_FILE).items():
        path, part = _parse_key(key, adapter_dir)
        (A if part == "A" else B)[path] = tensor.float()
    if not A:
        raise AdapterError(f"adapter {adapter_dir}: no LoRA weights in {WEIGHTS_FILE}")
    try:
        return _padded(A, B, config)
    except (KeyError, ValueError, TypeError, re.error) as exc:
        raise AdapterError(f"adapter {adapter_dir}: inconsistent weights or config: {exc}") from exc


def adapter_sha256(adapter_dir: Path) -> str:
    """sha256 over the bytes of ``adapter_config.json`` then ``adapter_model.safetensors``."""
    h = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            h.update((Path(adapter_dir) / name).read_bytes())
        except OSError as exc:
            raise AdapterError(f"adapter {adapter_dir}: cannot read {name}: {exc}") from exc
    return h.hexdigest()


def read_lineage(adapter_dir: Path) -> dict[str, Any]:
    """The lineage sidecar ``instill.json``."""
    return _read_json(Path(adapter_dir) / LINEAGE_FILE, adapter_dir)


def update_lineage(adapter_dir: Path, patch: dict[str, Any]) -> dict[str, Any]:
    """Merge ``patch`` into ``instill.json`` (top-level keys replaced), atomically; returns the result."""
    lineage = {**read_lineage(adapter_dir), **patch}
    path = Path(adapter_dir) / LINEAGE_FILE
    tmp = path.with_name(f".{LINEAGE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(_json(lineage))
    os.replace(tmp, path)
    return lineage


def _unpadded(weights: LoraWeights) -> dict[str, Factors]:
    """Each module's A and B without trailing rank components that are zero in both (padding adds
    nothing to the update); at least rank 1, as PEFT needs."""
    out = {}
    for path in weights.modules:
        A, B = weights.A[path].detach().cpu().float(), weights.B[path].detach().cpu().float()
        used = torch.nonzero((A != 0).any(dim=1) | (B != 0).any(dim=0))
        rank = int(used.max()) + 1 if len(used) else 1
        out[path] = (A[:rank].contiguous(), B[:, :rank].contiguous())
    return out


def _padded(A: dict[str, torch.Tensor], B: dict[str, torch.Tensor], config: dict[str, Any]) -> LoraWeights:
    """LoraWeights (one rank) from a folder's factors: modules of a lower rank are zero-padded, and a
    module whose own scaling (its alpha over its rank) differs from the first's has it folded into B.
    A module's rank is its tensors'; its alpha the first ``alpha_pattern`` key that names it the way PEFT
    matches keys (the full path or a suffix of it, as a regular expression), else ``lora_alpha``."""
    alpha_of = config.get("alpha_pattern") or {}

    def scaling(path: str) -> float:
        r = A[path].shape[-2]
        key = next((k for k in alpha_of if re.match(rf"(.*\.)?(?:{k})$", path)), None)
        alpha = float(alpha_of[key] if key is not None else config["lora_alpha"])
        return alpha / (r**0.5 if config.get("use_rslora") else r)

    scalings = {p: scaling(p) for p in A}
    common = next(iter(scalings.values()))
    B = {p: b * (scalings[p] / common) for p, b in B.items()}
    return LoraWeights(*padded_to_one_rank(A, B), common)


def _peft_state_dict(factors: dict[str, Factors]) -> dict[str, torch.Tensor]:
    state = {}
    for path, (A, B) in factors.items():
        state[f"{_PREFIX}{path}.lora_A.weight"] = A
        state[f"{_PREFIX}{path}.lora_B.weight"] = B
    return state


def _parse_key(key: str, adapter_dir: Path) -> tuple[str, str]:
    for suffix, part in _SUFFIXES.items():
        if key.startswith(_PREFIX) and key.endswith(suffix):
            return key[len(_PREFIX) : -len(suffix)], part
    raise AdapterError(f"adapter {adapter_dir}: unexpected tensor {key!r} (not a PEFT LoRA A/B weight)")


def _replace_dir(new: Path, target: Path) -> None:
    if not target.exists():
        os.rename(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _read_json(path: Path, adapter_dir: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise AdapterError(f"adapter {adapter_dir}: {Path(path).name} is missing") from exc
    except ValueError as exc:
        raise AdapterError(f"adapter {adapter_dir}: {Path(path).name} is not valid JSON: {exc}") from exc


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
