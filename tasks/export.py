"""`instill export`: the adapters an alias points at, as folders a serving stack loads, and vLLM's rules.

Every format writes one PEFT folder per document (``<out>/<model>/``, the files exactly as registered, so
their sha256 is the registry's) and ``adapters.json`` (name, path, document, version, sha256, base model).
``vllm`` adds ``vllm-args.txt`` (the ``--enable-lora --max-loras --max-lora-rank --lora-modules name=path
...`` arguments) and ``lora-modules.json`` (vLLM's JSON form of ``--lora-modules``); ``lorax`` adds
``lorax.json`` (per adapter: ``adapter_id`` = the folder, ``adapter_source`` = ``local``). Every folder is
checked against vLLM's adapter rules first (``validate_vllm``); ``vllm`` refuses to write a set with a
problem, the other formats report them.

vLLM's rules (research/anchors-2.md "Serving rules", vLLM 0.11): ``max_lora_rank`` is one of
``VLLM_MAX_LORA_RANKS`` and at least the adapter's rank; no LoRA bias (removed in vLLM PR #25807); no
``modules_to_save``; no DoRA; target modules among those vLLM's model class supports (Llama-like models:
the projections it packs as ``qkv_proj`` and ``gate_up_proj``, plus ``o_proj``, ``down_proj``,
``embed_tokens``, ``lm_head``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tasks.aliases import PRODUCTION

Format = Literal["vllm", "lorax", "peft"]
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_LLAMA_LIKE = frozenset(
    {
        "q_proj",
        "k_proj",
        "v_proj",
        "qkv_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "gate_up_proj",
        "down_proj",
        "embed_tokens",
        "lm_head",
    }
)
# vLLM model classes whose LoRA-supported modules we know (all Llama-like decoder stacks).
VLLM_SUPPORTED_MODULES: dict[str, frozenset[str]] = {
    arch: _LLAMA_LIKE
    for arch in (
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
    )
}
# The Hugging Face id a server loads for a base model alias instill knows.
HF_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


class ExportError(ValueError):
    """The export cannot be written (nothing has the alias, or vLLM's rules are broken)."""


@dataclass(frozen=True)
class Problem:
    adapter: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.adapter}: [{self.rule}] {self.message}"


def validate_vllm(
    adapter_dir: Path, max_lora_rank: int = 16, architecture: str = "LlamaForCausalLM"
) -> list[Problem]:
    """Every way the folder breaks vLLM's adapter rules (an empty list: vLLM will load it)."""
    from safetensors import safe_open

    name = Path(adapter_dir).name
    problems: list[Problem] = []

    def bad(rule: str, message: str) -> None:
        problems.append(Problem(name, rule, message))

    config_path = Path(adapter_dir) / "adapter_config.json"
    try:
        config: dict[str, Any] = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        return [Problem(name, "config", f"adapter_config.json unreadable: {exc}")]
    if config.get("peft_type", "LORA") != "LORA":
        bad("peft_type", f"peft_type is {config.get('peft_type')!r}; vLLM loads LORA adapters only")
    if max_lora_rank not in VLLM_MAX_LORA_RANKS:
        bad("max_lora_rank", f"--max-lora-rank {max_lora_rank} is not one of {list(VLLM_MAX_LORA_RANKS)}")
    ranks = [int(config.get("r", 0))] + [int(r) for r in (config.get("rank_pattern") or {}).values()]
    rank = max(ranks)
    if rank > max_lora_rank:
        fit = next((r for r in VLLM_MAX_LORA_RANKS if r >= rank), None)
        hint = (
            f"; serve with --max-lora-rank {fit}"
            if fit
            else f"; above vLLM's largest ({VLLM_MAX_LORA_RANKS[-1]})"
        )
        bad("rank", f"rank {rank} exceeds --max-lora-rank {max_lora_rank}{hint}")
    if config.get("bias", "none") != "none":
        bad("bias", f"bias is {config.get('bias')!r}; current vLLM does not load LoRA bias (needs 'none')")
    if config.get("modules_to_save"):
        bad("modules_to_save", f"modules_to_save {config['modules_to_save']} is not supported by vLLM")
    if config.get("use_dora"):
        bad("dora", "use_dora is true; vLLM does not serve DoRA adapters")
    supported = VLLM_SUPPORTED_MODULES.get(architecture)
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    if supported is None:
        bad("architecture", f"unknown architecture {architecture!r}: cannot check target modules")
    else:
        unsupported = sorted({t.rsplit(".", 1)[-1] for t in targets} - supported)
        if unsupported:
            bad(
                "target_modules",
                f"{unsupported} not supported by vLLM for {architecture} (supported: {sorted(supported)})",
            )
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        bad("weights", "adapter_model.safetensors is missing")
    else:
        with safe_open(str(weights), "pt") as f:
            keys = list(f.keys())
        biases = [k for k in keys if k.endswith(".bias")]
        if biases:
            bad("bias", f"{len(biases)} LoRA bias tensors in the weights (e.g. {biases[0]})")
        saved = [k for k in keys if "lora_" not in k]
        if saved:
            bad("modules_to_save", f"{len(saved)} full-module tensors in the weights (e.g. {saved[0]})")
    return problems


def base_architecture(base_model: str, models_dir: Path) -> str:
    """The base model's architecture from its config.json (LlamaForCausalLM when it cannot be read)."""
    try:
        from hypernet.base_model import resolve_base_model

        config = json.loads((resolve_base_model(base_model, models_dir) / "config.json").read_text())
        return (config.get("architectures") or ["LlamaForCausalLM"])[0]
    except Exception:
        return "LlamaForCausalLM"


def export(
    config: str,
    fmt: Format,
    out_dir: Path,
    alias: str = PRODUCTION,
    max_lora_rank: int | None = None,
) -> dict[str, Any]:
    """Write the alias's adapters for ``fmt`` into ``out_dir``; returns the index written."""
    from tasks.answer import AdapterCache, production_documents
    from tasks.runtime import runtime

    if fmt not in ("vllm", "lorax", "peft"):
        raise ExportError(f"unknown format {fmt!r}: vllm, lorax or peft")
    rt = runtime(config)
    docs = production_documents(rt, alias)
    if not docs:
        raise ExportError(f"{rt.kb.name}: no document has a {alias!r} adapter to export")
    cache = AdapterCache(rt)
    base_model = rt.kb.generator.base_model
    architecture = base_architecture(base_model, rt.settings.models_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, problems = [], []
    folders = [(d, cache.folder(d.model, d.version, d.sha256)) for d in docs]
    rank = max(json.loads((f / "adapter_config.json").read_text())["r"] for _, f in folders)
    max_rank = max_lora_rank or next((r for r in VLLM_MAX_LORA_RANKS if r >= rank), rank)
    for doc, folder in folders:
        problems += validate_vllm(folder, max_rank, architecture)
        target = out_dir / doc.model
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(folder, target)
        entries.append(
            {
                "name": doc.model,
                "path": str(target.resolve()),
                "document": doc.label,
                "version": doc.version,
                "alias": alias,
                "adapter_sha256": doc.sha256,
            }
        )
    if fmt == "vllm" and problems:
        raise ExportError("vLLM would refuse these adapters:\n" + "\n".join(map(str, problems)))
    served_base = HF_IDS.get(base_model.lower(), base_model)
    index = {
        "knowledge_base": rt.kb.name,
        "format": fmt,
        "alias": alias,
        "base_model": served_base,
        "architecture": architecture,
        "max_lora_rank": max_rank,
        "adapters": entries,
        "problems": [str(p) for p in problems],
    }
    (out_dir / "adapters.json").write_text(json.dumps(index, indent=2) + "\n")
    if fmt == "vllm":
        modules = [{"name": e["name"], "path": e["path"], "base_model_name": served_base} for e in entries]
        (out_dir / "lora-modules.json").write_text(json.dumps(modules, indent=2) + "\n")
        args = [
            "--enable-lora",
            "--max-loras",
            str(min(len(entries), 8)),
            "--max-lora-rank",
            str(max_rank),
            "--lora-modules",
            *[f"{e['name']}={e['path']}" for e in entries],
        ]
        (out_dir / "vllm-args.txt").write_text(" ".join(args) + "\n")
        index["vllm_args"] = args
    if fmt == "lorax":
        lorax = [{"adapter_id": e["path"], "adapter_source": "local", "name": e["name"]} for e in entries]
        (out_dir / "lorax.json").write_text(json.dumps(lorax, indent=2) + "\n")
    return index
