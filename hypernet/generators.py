"""Adapter generators behind one interface, chosen by configuration.

Every generator turns a document's text into ``LoraWeights`` for one base model and names itself by a
fingerprint: the pipeline keys adapters on (text sha256, generator fingerprint), so a rerun with the
same base model, generator kind, config (and checkpoint) regenerates nothing. Kinds: ``cd``
(per-document context distillation), ``hypernet`` (the trained Doc-to-LoRA network, one pass),
``hypernet+cd`` (the generated adapter refined by a few distillation steps), ``memory`` (the
document's closed-form key-value memory alone, ``hypernet.memory``) and ``t2l`` (an
instruction's text through the Text-to-LoRA network, ``hypernet.t2l``). Other kinds can be added
with ``register_generator``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hypernet.base_model import DEFAULT_BASE_MODEL, BaseModel, sha256_files
from hypernet.cd import distill
from hypernet.config import CDConfig
from hypernet.features import FeatureConfig, FeatureEncoder
from hypernet.lora import LoraWeights, apply_together
from hypernet.memory import (
    MemoryConfig,
    key_statistics,
    memory_from_reads,
    memory_lora,
    memory_paths,
    recording,
)
from hypernet.model import WEIGHTS_FILE, CheckpointError, Hypernet, checkpoint_sha256, load_hypernet
from hypernet.t2l import WEIGHTS_FILE as T2L_WEIGHTS
from hypernet.t2l import T2LError, T2LHypernet, describe_to_lora, load_t2l, shipped_checkpoint

# The checkpoints shipped with the package: base-model alias -> folder.
CHECKPOINTS_DIR = Path(__file__).resolve().parent / "checkpoints"
SHIPPED_CHECKPOINTS = {DEFAULT_BASE_MODEL: CHECKPOINTS_DIR / DEFAULT_BASE_MODEL}

Progress = Callable[[int, float], None]
# The generators that read a Doc-to-LoRA checkpoint (option ``checkpoint``).
D2L_GENERATORS = ("hypernet", "hypernet+cd")


class GeneratorError(ValueError):
    """A generator cannot be built from the configuration; the message names it and says why."""


@dataclass
class GeneratedAdapter:
    """One generated adapter with how long it took and numeric metrics (safe to log as-is)."""

    weights: LoraWeights
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class Generator(Protocol):
    """What the pipeline needs from a generator."""

    name: str  # cd | hypernet | hypernet+cd

    def fingerprint(self) -> str:
        """sha256 hex of everything that determines the output besides the text."""
        ...

    def describe(self) -> dict[str, Any]:
        """kind, config, base model id and weights sha256, checkpoint sha256 (or None), fingerprint."""
        ...

    def generate(self, text: str, progress: Progress | None = None) -> GeneratedAdapter: ...


def fingerprint_of(
    kind: str, base: BaseModel, config: dict[str, Any], checkpoint_sha256: str | None = None
) -> str:
    """The generator fingerprint: sha256 over kind, base model id and weights, config JSON, checkpoint."""
    payload = {
        "kind": kind,
        "base_model_id": base.model_id,
        "base_model_sha256": base.weights_sha256,
        "config": config,
        "checkpoint_sha256": checkpoint_sha256,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def describe_generator(
    kind: str, base: BaseModel, config: dict[str, Any], checkpoint_sha256: str | None = None
) -> dict[str, Any]:
    """The catalog's view of a generator (its ``hypernets`` row)."""
    return {
        "kind": kind,
        "config": config,
        "base_model_id": base.model_id,
        "base_model_sha256": base.weights_sha256,
        "checkpoint_sha256": checkpoint_sha256,
        "fingerprint": fingerprint_of(kind, base, config, checkpoint_sha256),
    }


class CDGenerator:
    """Per-document context distillation: slow (tens of seconds per document on CPU) and strong."""

    name = "cd"

    def __init__(self, base: BaseModel, cfg: CDConfig) -> None:
        self.base = base
        self.cfg = cfg

    def fingerprint(self) -> str:
        return fingerprint_of(self.name, self.base, self.cfg.to_dict())

    def describe(self) -> dict[str, Any]:
        return describe_generator(self.name, self.base, self.cfg.to_dict())

    def generate(self, text: str, progress: Progress | None = None) -> GeneratedAdapter:
        result = distill(self.base, text, self.cfg, progress=progress)
        metrics = {
            "kl_start": result.losses[0] if result.losses else result.final_loss,
            "kl_end": result.final_loss,
            "steps": float(len(result.losses)),
            "probes": float(len(result.probes)),
            "doc_tokens": float(result.doc_tokens),
        }
        return GeneratedAdapter(result.weights, result.seconds, metrics, result.notes)


class HypernetInputError(ValueError):
    """A document the hypernetwork cannot read (no tokens); the message says why."""


# hypernet+cd's default refinement. With the document's memory in the starting point, 2 steps passed the QA
# gates on all 24 held-out real documents of one, two and four chunks (docs/eval-memory.md), at 14 s per
# one-chunk document against 21 s for 5 steps; without the memory 2 steps passed 4 of 8.
REFINE_STEPS = 2


@dataclass(frozen=True)
class HypernetGeneratorConfig:
    """Options of ``hypernet`` and ``hypernet+cd``.

    ``checkpoint`` is a folder with ``hypernet.safetensors`` (default: the shipped one for the base
    model's alias). ``max_chunks`` bounds the rank of long documents (``max_chunks * rank + bias rank``):
    text beyond it is dropped, with a note. ``refine`` is the CD configuration of ``hypernet+cd``'s
    refinement (its rank and alpha are unused: the generated adapter fixes both).
    """

    checkpoint: str | None = None
    max_chunks: int = 8
    refine: CDConfig = field(default_factory=lambda: CDConfig(steps=REFINE_STEPS))
    memory: MemoryConfig | None = field(default_factory=MemoryConfig)

    def __post_init__(self) -> None:
        if self.max_chunks < 1:
            raise ValueError(f"invalid value for max_chunks: {self.max_chunks} (must be >= 1)")

    def fingerprint_config(self, refine: bool) -> dict[str, Any]:
        """What determines the output besides the checkpoint bytes (its path does not)."""
        out: dict[str, Any] = {"max_chunks": self.max_chunks}
        if refine:
            out["refine"] = self.refine.to_dict()
        return out

    @classmethod
    def from_options(cls, options: dict[str, Any], refine: bool) -> HypernetGeneratorConfig:
        """``checkpoint``, ``max_chunks`` and ``memory`` (false, true or MemoryConfig fields), plus
        (``hypernet+cd`` only) any CDConfig field."""
        own = {"checkpoint", "max_chunks", "memory"}
        cd_keys = set(CDConfig.__dataclass_fields__) if refine else set()
        unknown = sorted(set(options) - own - cd_keys)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; known: {sorted(own | cd_keys)}")
        cd_options = {"steps": REFINE_STEPS} | {k: v for k, v in options.items() if k in cd_keys}
        mine = {k: v for k, v in options.items() if k in own}
        if "memory" in mine:
            mine["memory"] = _memory_option(mine["memory"])
        return cls(refine=CDConfig.from_dict(cd_options), **mine)


def _memory_option(value: Any) -> MemoryConfig | None:
    """``memory: false`` -> None, ``true`` -> the defaults, a mapping -> those MemoryConfig fields."""
    if value is None or value is False:
        return None
    if value is True:
        return MemoryConfig()
    if isinstance(value, MemoryConfig):
        return value
    if isinstance(value, dict):
        return MemoryConfig.from_dict(value)
    raise ValueError(f"option memory: expected true, false or a mapping of memory fields, got {value!r}")


def default_checkpoint(base: BaseModel) -> Path | None:
    """The shipped checkpoint folder for ``base``'s alias, if the package has one."""
    folder = SHIPPED_CHECKPOINTS.get(base.model_id)
    return folder if folder is not None and (folder / WEIGHTS_FILE).is_file() else None


class HypernetGenerator:
    """Doc-to-LoRA: one pass of the frozen base model over the document, one of the hypernetwork.

    Documents longer than the network's chunk size are cut into chunks; each chunk's LoRA is
    concatenated along rank and the bias LoRA added once (rank ``chunks * r + bias rank``, scaling 1).
    With ``cfg.memory`` (the default) the document's closed-form key-value memory (``hypernet.memory``)
    is added to the generated update: the network gives what it learnt in general, the memory what
    this document says (docs/eval-memory.md).
    """

    name = "hypernet"

    def __init__(self, base: BaseModel, net: Hypernet, checkpoint_sha: str, cfg: HypernetGeneratorConfig):
        self.base, self.net, self.cfg = base, net, cfg
        self.checkpoint_sha256 = checkpoint_sha
        self.encoder = FeatureEncoder(base, FeatureConfig(chunk_tokens=net.cfg.chunk_tokens, memory_bytes=0))
        # The memory reads the document in the network's chunks, so max_chunks bounds both alike.
        self.memory = replace(cfg.memory, chunk_tokens=net.cfg.chunk_tokens) if cfg.memory else None
        self.memory_stats = key_statistics(base, self.memory) if self.memory else None
        self.memory_paths = memory_paths(base, self.memory.layers) if self.memory else []

    def fingerprint(self) -> str:
        return fingerprint_of(self.name, self.base, self._config(), self.checkpoint_sha256)

    def describe(self) -> dict[str, Any]:
        return describe_generator(self.name, self.base, self._config(), self.checkpoint_sha256)

    def _config(self) -> dict[str, Any]:
        return self.cfg.fingerprint_config(refine=False) | self._memory_config()

    def _memory_config(self) -> dict[str, Any]:
        return {"memory": self.memory.to_dict()} if self.memory else {}

    def _features(self, text: str) -> tuple[list, LoraWeights | None, dict[str, float], list[str]]:
        """The features of the document's chunks (at most ``max_chunks``), the document's memory (read
        from the same pass; None when off), its metrics and notes."""
        chunks = self.encoder.chunk_ids(text)
        if not text.strip():
            raise HypernetInputError("document is empty: the hypernetwork has nothing to read")
        notes = []
        if len(chunks) > self.cfg.max_chunks:
            size = self.net.cfg.chunk_tokens
            notes.append(
                f"document truncated to its first {self.cfg.max_chunks} chunks "
                f"({self.cfg.max_chunks * size} tokens) of {len(chunks)}"
            )
            chunks = chunks[: self.cfg.max_chunks]
        if self.memory is None:
            features, memory = [self.encoder.encode_ids(ids) for ids in chunks], None
        else:
            with recording(self.base, self.memory_paths) as reads:
                features = [self.encoder.encode_ids(ids) for ids in chunks]
            memory = memory_from_reads(self.base, chunks, reads, self.memory, self.memory_stats)
        metrics = {"chunks": float(len(chunks)), "doc_tokens": float(sum(f.shape[1] for f in features))}
        return features, memory, metrics, notes

    def generated(self, text: str) -> tuple[LoraWeights, dict[str, float], list[str]]:
        """The generated adapter (on the CPU), its metrics and notes."""
        features, memory, metrics, notes = self._features(text)
        return _with_memory(self.net.generate(features).detach(), memory), metrics, notes

    def generated_many(self, texts: list[str]) -> list[tuple[LoraWeights, dict[str, float], list[str]]]:
        """``generated`` for several documents, through one batched pass of the hypernetwork (the base
        model still reads each chunk on its own); equal to ``generated`` up to float rounding."""
        import torch

        prepared = [self._features(text) for text in texts]
        with torch.no_grad():
            A, B = self.net.document_factors([features for features, _, _, _ in prepared])
            bias_A, bias_B = self.net.bias_factors()
        out = []
        for i, (features, memory, metrics, notes) in enumerate(prepared):
            rank = len(features) * self.net.cfg.rank  # this document's chunks; the rest is padding
            As, Bs = {}, {}
            for layer, path in enumerate(self.net.cfg.module_paths):
                As[path] = torch.cat([A[i, layer, :rank], bias_A[layer]], dim=0)
                Bs[path] = torch.cat([B[i, layer, :, :rank], bias_B[layer]], dim=1)
            out.append((_with_memory(LoraWeights(As, Bs, 1.0), memory), metrics, notes))
        return out

    def generate(self, text: str, progress: Progress | None = None) -> GeneratedAdapter:
        start = time.perf_counter()
        weights, metrics, notes = self.generated(text)
        return GeneratedAdapter(weights, time.perf_counter() - start, metrics, notes)

    def generate_many(self, texts: list[str]) -> list[GeneratedAdapter]:
        """Several documents at once (a worker's batch); each one's ``seconds`` is its share."""
        start = time.perf_counter()
        made = self.generated_many(texts)
        share = (time.perf_counter() - start) / max(len(texts), 1)
        return [GeneratedAdapter(weights, share, metrics, notes) for weights, metrics, notes in made]


def _with_memory(weights: LoraWeights, memory: LoraWeights | None) -> LoraWeights:
    """The network's adapter plus the document's memory (modules of either; rank zero-padded)."""
    return weights if memory is None else apply_together([weights, memory])


class HypernetCDGenerator(HypernetGenerator):
    """The generated adapter as the starting point of a few context-distillation steps."""

    name = "hypernet+cd"

    def _config(self) -> dict[str, Any]:
        return self.cfg.fingerprint_config(refine=True) | self._memory_config()

    def generate(self, text: str, progress: Progress | None = None) -> GeneratedAdapter:
        start = time.perf_counter()
        init, metrics, notes = self.generated(text)
        result = distill(self.base, text, self.cfg.refine, init=init, progress=progress)
        metrics |= {
            "kl_start": result.losses[0] if result.losses else result.final_loss,
            "kl_end": result.final_loss,
            "steps": float(len(result.losses)),
            "probes": float(len(result.probes)),
        }
        return GeneratedAdapter(result.weights, time.perf_counter() - start, metrics, notes + result.notes)

    generate_many = None  # the refinement is per document: generate_batch goes one by one


GeneratorBuilder = Callable[[BaseModel, dict[str, Any]], Generator]


def _build_cd(base: BaseModel, options: dict[str, Any]) -> Generator:
    try:
        return CDGenerator(base, CDConfig.from_dict(options))
    except (TypeError, ValueError) as exc:
        raise GeneratorError(f"generator 'cd': {exc}") from exc


def _hypernet_builder(name: str, cls: type[HypernetGenerator]) -> GeneratorBuilder:
    def build(base: BaseModel, options: dict[str, Any]) -> Generator:
        try:
            cfg = HypernetGeneratorConfig.from_options(options, refine=cls is HypernetCDGenerator)
        except (TypeError, ValueError) as exc:
            raise GeneratorError(f"generator {name!r}: {exc}") from exc
        folder = Path(cfg.checkpoint) if cfg.checkpoint else default_checkpoint(base)
        if folder is None:
            raise GeneratorError(
                f"generator {name!r} needs a trained checkpoint: none is shipped for base model "
                f"{base.model_id!r} (train one with `instill train-hypernet` and set the option "
                f"`checkpoint`, or use generator 'cd')"
            )
        try:
            net = load_hypernet(folder, base.device)
            net.check_base(base.weights_sha256)
            sha = checkpoint_sha256(folder)
        except (CheckpointError, OSError) as exc:
            raise GeneratorError(f"generator {name!r}: {exc}") from exc
        try:
            return cls(base, net, sha, cfg)
        except ValueError as exc:  # memory settings this model cannot take (a layer it lacks)
            raise GeneratorError(f"generator {name!r}: {exc}") from exc

    return build


class MemoryGenerator:
    """The document's key-value memory alone (``hypernet.memory``): one read of the document, no network.

    Building it reads a few thousand tokens of general text once (the memory's key statistics)."""

    name = "memory"

    def __init__(self, base: BaseModel, cfg: MemoryConfig) -> None:
        self.base, self.cfg = base, cfg
        self.stats = key_statistics(base, cfg)

    def fingerprint(self) -> str:
        return fingerprint_of(self.name, self.base, self.cfg.to_dict())

    def describe(self) -> dict[str, Any]:
        return describe_generator(self.name, self.base, self.cfg.to_dict())

    def generate(self, text: str, progress: Progress | None = None) -> GeneratedAdapter:
        if not text.strip():
            raise HypernetInputError("document is empty: the memory has nothing to read")
        start = time.perf_counter()
        weights = memory_lora(self.base, text, self.cfg, self.stats)
        return GeneratedAdapter(weights, time.perf_counter() - start, {"rank": float(weights.rank)})


def _build_memory(base: BaseModel, options: dict[str, Any]) -> Generator:
    try:
        return MemoryGenerator(base, MemoryConfig.from_dict(options))
    except (TypeError, ValueError) as exc:
        raise GeneratorError(f"generator 'memory': {exc}") from exc


class T2LGenerator:
    """An instruction's text through the Text-to-LoRA network (``hypernet.t2l``): one pass, no training."""

    name = "t2l"
    max_chars = 2000  # the network was trained on one- or two-sentence descriptions

    def __init__(self, base: BaseModel, net: T2LHypernet, checkpoint_sha: str) -> None:
        self.base, self.net, self.checkpoint_sha = base, net, checkpoint_sha

    def _config(self) -> dict[str, Any]:
        c = self.net.cfg
        return {
            "targets": list(c.targets),
            "rank": c.rank,
            "alpha": c.alpha,
            "encoder_layer": c.encoder_layer,
        }

    def fingerprint(self) -> str:
        return fingerprint_of(self.name, self.base, self._config(), self.checkpoint_sha)

    def describe(self) -> dict[str, Any]:
        return describe_generator(self.name, self.base, self._config(), self.checkpoint_sha)

    def generate(self, text: str, progress: Progress | None = None) -> GeneratedAdapter:
        description = " ".join(text.split())
        if not description:
            raise ValueError("the instruction is empty: nothing to turn into an adapter")
        notes = []
        if len(description) > self.max_chars:
            notes.append(
                f"instruction truncated to its first {self.max_chars} of {len(description)} characters"
            )
            description = description[: self.max_chars]
        start = time.perf_counter()
        weights = describe_to_lora(self.base, self.net, description)
        metrics = {"description_chars": float(len(description))}
        return GeneratedAdapter(weights, time.perf_counter() - start, metrics, notes)


def _build_t2l(base: BaseModel, options: dict[str, Any]) -> Generator:
    unknown = sorted(set(options) - {"checkpoint"})
    if unknown:
        raise GeneratorError(f"generator 't2l': unknown option(s) {unknown}; known: ['checkpoint']")
    try:
        folder = (
            Path(options["checkpoint"]) if options.get("checkpoint") else shipped_checkpoint(base.model_id)
        )
        net = load_t2l(folder, base.device, base=base)
    except T2LError as exc:
        raise GeneratorError(f"generator 't2l': {exc}") from exc
    return T2LGenerator(base, net, sha256_files([folder / T2L_WEIGHTS]))


_BUILDERS: dict[str, GeneratorBuilder] = {
    "cd": _build_cd,
    "memory": _build_memory,
    "t2l": _build_t2l,
    "hypernet": _hypernet_builder("hypernet", HypernetGenerator),
    "hypernet+cd": _hypernet_builder("hypernet+cd", HypernetCDGenerator),
}


def register_generator(name: str, builder: GeneratorBuilder) -> None:
    """Make ``make_generator(name, ...)`` call ``builder(base, options)``; replaces a placeholder."""
    _BUILDERS[name] = builder


def generator_names() -> list[str]:
    return sorted(_BUILDERS)


def make_generator(name: str, base: BaseModel, options: dict[str, Any] | None = None) -> Generator:
    """Build generator ``name`` for ``base``; ``options`` are its config fields (unknown keys rejected)."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise GeneratorError(f"unknown generator {name!r}; known: {generator_names()}") from None
    return builder(base, dict(options or {}))
