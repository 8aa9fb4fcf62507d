"""LoRA maths shared by every generator: the weights container, applying it, combining chunks.

A generated adapter is a set of low-rank updates ΔW = scaling · B @ A, one per target module
(by default ``mlp.down_proj`` of every layer). Applying it never replaces modules: a forward hook
adds ``scaling · (x @ Aᵀ) @ Bᵀ`` to the wrapped ``nn.Linear``'s output (PEFT's wrap-the-layer idea),
so the base model stays untouched and the same code serves training (gradients flow into A and B)
and inference. A and B may carry a leading batch dimension: one adapter per sequence in the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class LoraWeights:
    """Low-rank updates keyed by module path (e.g. ``model.layers.3.mlp.down_proj``).

    ``A[path]`` is ``[r, d_in]`` and ``B[path]`` is ``[d_out, r]`` (PEFT's ``lora_A``/``lora_B``
    layout), optionally with a leading batch dimension. The update is ``scaling · B @ A``;
    ``scaling`` is stored as is, so a PEFT export writes ``lora_alpha = scaling · r``.
    """

    A: dict[str, Tensor]
    B: dict[str, Tensor]
    scaling: float

    def __post_init__(self) -> None:
        if self.A.keys() != self.B.keys():
            raise ValueError("LoraWeights: A and B must name the same modules")
        ranks = {a.shape[-2] for a in self.A.values()} | {b.shape[-1] for b in self.B.values()}
        if len(ranks) != 1:
            raise ValueError(f"LoraWeights: every module must have the same rank, got {sorted(ranks)}")

    @property
    def rank(self) -> int:
        return next(iter(self.A.values())).shape[-2]

    @property
    def modules(self) -> list[str]:
        return list(self.A)

    def scaled(self, factor: float) -> LoraWeights:
        """The same factors with the update multiplied by ``factor`` (a weaker or stronger adapter)."""
        return LoraWeights(self.A, self.B, self.scaling * factor)

    @property
    def target_names(self) -> list[str]:
        """Leaf names of the targeted modules (``["down_proj"]``), for ``target_modules``."""
        return sorted({path.rsplit(".", 1)[-1] for path in self.A})

    def detach(self) -> LoraWeights:
        return LoraWeights(
            {k: v.detach().cpu().float().contiguous() for k, v in self.A.items()},
            {k: v.detach().cpu().float().contiguous() for k, v in self.B.items()},
            float(self.scaling),
        )

    def delta(self, path: str) -> Tensor:
        """The dense update ``scaling · B @ A`` for one module (``[..., d_out, d_in]``)."""
        return self.scaling * self.B[path] @ self.A[path]


def concat_rank(parts: list[LoraWeights]) -> LoraWeights:
    """Concatenate adapters along rank: the sum of their updates, at one common scaling.

    Each part's scaling is folded into its B so parts with different scalings combine exactly.
    """
    if not parts:
        raise ValueError("concat_rank needs at least one adapter")
    paths = parts[0].modules
    A = {p: torch.cat([w.A[p] for w in parts], dim=-2) for p in paths}
    B = {p: torch.cat([w.B[p] * w.scaling for w in parts], dim=-1) for p in paths}
    return LoraWeights(A, B, 1.0)


def apply_together(parts: list[LoraWeights]) -> LoraWeights:
    """Adapters of different modules (an instruction's ``q_proj``/``v_proj`` and a document's
    ``down_proj``) as one that applies them all at once: each module gets the sum of the updates of the
    parts that target it.

    A module several parts target is concatenated along rank (``concat_rank``'s maths, scaling folded
    into B). ``LoraWeights`` holds one rank, so every module is zero-padded to the largest: zero rows of
    A and columns of B add nothing to the update."""
    if not parts:
        raise ValueError("apply_together needs at least one adapter")
    paths = list(dict.fromkeys(p for w in parts for p in w.modules))
    A, B = {}, {}
    for p in paths:
        having = [w for w in parts if p in w.A]
        A[p] = torch.cat([w.A[p] for w in having], dim=-2)
        B[p] = torch.cat([w.B[p] * w.scaling for w in having], dim=-1)
    return LoraWeights(*padded_to_one_rank(A, B), 1.0)


def padded_to_one_rank(
    A: dict[str, Tensor], B: dict[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Every module's factors zero-padded to the largest rank among them (``LoraWeights`` holds one):
    zero rows of A and columns of B add nothing to the update."""
    rank = max(a.shape[-2] for a in A.values())
    A, B = dict(A), dict(B)
    for p in A:
        pad = rank - A[p].shape[-2]
        if pad:
            A[p] = torch.cat([A[p], A[p].new_zeros(*A[p].shape[:-2], pad, A[p].shape[-1])], dim=-2)
            B[p] = torch.cat([B[p], B[p].new_zeros(*B[p].shape[:-1], pad)], dim=-1)
    return A, B


def target_linears(model: nn.Module, target: str = "down_proj") -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` whose leaf name is ``target``, keyed by its module path."""
    found = {
        name: mod
        for name, mod in model.named_modules()
        if name.rsplit(".", 1)[-1] == target and isinstance(mod, nn.Linear)
    }
    if not found:
        raise ValueError(f"the model has no nn.Linear named {target!r}")
    return found


def _lora_hook(A: Tensor, B: Tensor, scaling: float):
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        x = inputs[0]
        a, b = A.to(x.dtype), B.to(x.dtype)
        if a.dim() == 2:
            return output + scaling * (x @ a.transpose(-1, -2)) @ b.transpose(-1, -2)
        # One adapter per batch element: x [bs, T, d_in], a [bs, r, d_in], b [bs, d_out, r].
        return output + scaling * torch.einsum("btr,bor->bto", torch.einsum("bti,bri->btr", x, a), b)

    return hook


@contextmanager
def applied(model: nn.Module, weights: LoraWeights | None) -> Iterator[nn.Module]:
    """Run ``model`` with ``weights`` added to its target modules; ``None`` means no adapter."""
    if weights is None:
        yield model
        return
    modules = dict(model.named_modules())
    missing = [p for p in weights.modules if p not in modules]
    if missing:
        raise ValueError(f"adapter targets modules the model lacks: {missing[:3]}")
    handles = [
        modules[p].register_forward_hook(_lora_hook(weights.A[p], weights.B[p], weights.scaling))
        for p in weights.modules
    ]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
