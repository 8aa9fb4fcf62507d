"""Adapter generators behind one interface, chosen by configuration.

Every generator turns a document's text into ``LoraWeights`` for one base model and names itself by a
fingerprint: the pipeline keys adapters on (text sha256, generator fingerprint), so a rerun with the
same base model, generator kind, config (and checkpoint) regenerates nothing. Kinds: ``cd``
(per-document context distillation), and later ``hypernet`` and ``hypernet+cd``, which the hypernetwork
module registers with ``register_generator``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from hypernet.base_model import BaseModel
from hypernet.cd import distill
from hypernet.config import CDConfig
from hypernet.lora import LoraWeights

Progress = Callable[[int, float], None]


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


GeneratorBuilder = Callable[[BaseModel, dict[str, Any]], Generator]


def _build_cd(base: BaseModel, options: dict[str, Any]) -> Generator:
    try:
        return CDGenerator(base, CDConfig.from_dict(options))
    except (TypeError, ValueError) as exc:
        raise GeneratorError(f"generator 'cd': {exc}") from exc


def _needs_checkpoint(name: str) -> GeneratorBuilder:
    def build(base: BaseModel, options: dict[str, Any]) -> Generator:
        raise GeneratorError(
            f"generator {name!r} needs a trained checkpoint: none is registered for this installation yet "
            "(train one with `instill train-hypernet`, or use generator 'cd')"
        )

    return build


_BUILDERS: dict[str, GeneratorBuilder] = {
    "cd": _build_cd,
    "hypernet": _needs_checkpoint("hypernet"),
    "hypernet+cd": _needs_checkpoint("hypernet+cd"),
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
