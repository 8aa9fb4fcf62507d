"""LoRA maths: adapters of different modules and ranks applied together."""

from __future__ import annotations

import torch

from hypernet.lora import LoraWeights, apply_together


def _weights(paths: list[str], rank: int, scaling: float, seed: int) -> LoraWeights:
    g = torch.Generator().manual_seed(seed)
    A = {p: torch.randn(rank, 6, generator=g) for p in paths}
    B = {p: torch.randn(5, rank, generator=g) for p in paths}
    return LoraWeights(A, B, scaling)


def test_apply_together_sums_each_modules_updates_and_pads_the_ranks():
    instruction = _weights(["l.0.q_proj", "l.0.v_proj"], rank=4, scaling=2.0, seed=0)
    knowledge = _weights(["l.0.down_proj", "l.0.q_proj"], rank=8, scaling=0.5, seed=1)
    both = apply_together([instruction, knowledge])
    assert set(both.modules) == {"l.0.q_proj", "l.0.v_proj", "l.0.down_proj"} and both.rank == 12
    assert torch.allclose(both.delta("l.0.v_proj"), instruction.delta("l.0.v_proj"), atol=1e-5)
    assert torch.allclose(both.delta("l.0.down_proj"), knowledge.delta("l.0.down_proj"), atol=1e-5)
    summed = instruction.delta("l.0.q_proj") + knowledge.delta("l.0.q_proj")
    assert torch.allclose(both.delta("l.0.q_proj"), summed, atol=1e-5)


def test_scaled_multiplies_the_update_and_leaves_the_factors():
    w = _weights(["l.0.q_proj"], rank=4, scaling=2.0, seed=2)
    half = w.scaled(0.5)
    assert half.A is w.A and half.B is w.B and half.scaling == 1.0
    assert torch.allclose(half.delta("l.0.q_proj"), 0.5 * w.delta("l.0.q_proj"), atol=1e-6)
