"""Several documents' adapters as one: PEFT's ``add_weighted_adapter`` ``cat`` and ``linear``, in tensors.

The maths is PEFT's own (``peft.tuners.lora.model.LoraModel.add_weighted_adapter``, PEFT 0.21), done on
``LoraWeights`` so that answering never wraps the base model in a ``PeftModel``; tests/tasks/test_combine.py
checks both against PEFT itself. Both give an adapter whose PEFT scaling is 1 (``lora_alpha = r``):

- ``cat``: ranks add up; ``A = [w_i · s_i · A_i]`` stacked, ``B = [B_i]`` side by side, so the update is
  exactly ``Σ w_i · s_i · B_i A_i`` (every document's own update, weighted).
- ``linear``: one rank-r adapter; ``A = Σ √(w_i s_i) A_i`` and ``B = Σ √(w_i s_i) B_i``; the update holds
  the cross terms ``B_i A_j`` too (PEFT's documented behaviour, which is why it is measured, not assumed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from hypernet.lora import LoraWeights

Combination = Literal["cat", "linear"]


def combine(
    adapters: Sequence[LoraWeights], weights: Sequence[float] | None = None, how: Combination = "cat"
) -> LoraWeights:
    """One adapter from several, as ``add_weighted_adapter(adapters, weights, combination_type=how)``."""
    if not adapters:
        raise ValueError("combine needs at least one adapter")
    weights = [1.0] * len(adapters) if weights is None else [float(w) for w in weights]
    if len(weights) != len(adapters):
        raise ValueError(f"combine: {len(adapters)} adapters but {len(weights)} weights")
    modules = adapters[0].modules
    if any(set(a.modules) != set(modules) for a in adapters):
        raise ValueError("combine: the adapters target different modules")
    if len(adapters) == 1:
        how = "linear"  # PEFT does the same: one adapter is combined linearly
    if how == "cat":
        A = {
            p: torch.cat([a.A[p] * w * a.scaling for a, w in zip(adapters, weights, strict=True)], dim=-2)
            for p in modules
        }
        B = {p: torch.cat([a.B[p] for a in adapters], dim=-1) for p in modules}
        return LoraWeights(A, B, 1.0)
    if how == "linear":
        if len({a.rank for a in adapters}) != 1:
            raise ValueError("combine linear: every adapter must have the same rank (PEFT's rule)")
        wa, wb = [], []
        for a, w in zip(adapters, weights, strict=True):
            ws = w * a.scaling
            wa.append(math.sqrt(abs(ws)) * (1 if ws >= 0 else -1))
            wb.append(math.sqrt(abs(ws)))
        A = {p: sum(x * a.A[p] for x, a in zip(wa, adapters, strict=True)) for p in modules}
        B = {p: sum(x * a.B[p] for x, a in zip(wb, adapters, strict=True)) for p in modules}
        return LoraWeights(A, B, 1.0)
    raise ValueError(f"combine: unknown combination {how!r} (cat or linear)")
