"""The closed-form key-value memory (hypernet.memory) and the `memory` generator, on the tiny Llama."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from hypernet.features import chat_chunks
from hypernet.generators import GeneratorError, HypernetInputError, MemoryGenerator, make_generator
from hypernet.memory import (
    MemoryConfig,
    content_positions,
    key_statistics,
    memory_layers,
    memory_lora,
    ridge_factors,
    truncated_svd,
)
from hypernet.metrics import text_nll

DOC = (
    "The river town of Alder Bay was founded in 1821 by fishermen from the northern coast. "
    "Engineers built a new bridge across the river in 1998, and it is 240 metres long."
)
OTHER = "Mara Quill keeps bees on the hill behind the mill, and sells the honey at the market on Fridays."
# Strong and little regularised, so that a 2-layer random model shows the effect plainly.
STRONG = MemoryConfig(layers=(1,), ridge=0.01, scale=2.0, rank=64, chunk_tokens=64, general_tokens=256)


def test_default_layers_are_every_second_from_two_thirds_of_the_depth() -> None:
    assert memory_layers(30) == (20, 22, 24, 26, 28)
    assert memory_layers(2) == (1,)
    assert memory_layers(30, (3, 5)) == (3, 5)


def test_positions_point_at_the_tokens_before_each_content_token(tiny_base) -> None:
    tok = tiny_base.tokenizer
    chunks = chat_chunks(tok, DOC, 16)
    content = tok(DOC, add_special_tokens=False)["input_ids"]
    assert len(chunks) == -(-len(content) // 16)
    ids = chunks[0]
    expected = tok(tok.decode(content[:16]), add_special_tokens=False)["input_ids"]
    assert [ids[p + 1] for p in content_positions(tok, ids).tolist()] == expected


def test_the_memory_makes_its_own_document_likelier_than_another(tiny_base) -> None:
    """Keys of the document map to its next tokens: re-reading it gets cheaper, other text far less."""
    stats = key_statistics(tiny_base, STRONG)
    weights = memory_lora(tiny_base, DOC, STRONG, stats)
    assert weights.modules == ["model.layers.1.mlp.down_proj"] and weights.scaling == 1.0
    gain_own = text_nll(tiny_base, [DOC], None) - text_nll(tiny_base, [DOC], weights)
    gain_other = text_nll(tiny_base, [OTHER], None) - text_nll(tiny_base, [OTHER], weights)
    assert gain_own > 0.05 and gain_own > 3 * gain_other


def test_the_ridge_weighs_one_chunk_of_tokens_however_long_the_document(tiny_base) -> None:
    """Per chunk, a document read in k chunks is solved with λ/k per token (λ times one chunk's tokens);
    per token, with λ. A one-chunk read is the same either way."""
    per_chunk = MemoryConfig(layers=(1,), ridge=5.0, rank=256, chunk_tokens=16, general_tokens=256)
    per_token = replace(per_chunk, ridge_per="token")
    stats = key_statistics(tiny_base, per_chunk)
    chunks = len(chat_chunks(tiny_base.tokenizer, DOC, 16))
    assert chunks > 1
    quieter = replace(per_token, ridge=5.0 / chunks)
    delta = lambda cfg: memory_lora(tiny_base, DOC, cfg, stats).delta("model.layers.1.mlp.down_proj")  # noqa: E731
    torch.testing.assert_close(delta(per_chunk), delta(quieter), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(delta(per_chunk), delta(per_token), rtol=1e-2, atol=1e-6)
    one_chunk = lambda cfg: replace(cfg, chunk_tokens=256)  # noqa: E731
    torch.testing.assert_close(delta(one_chunk(per_chunk)), delta(one_chunk(per_token)))


def test_rank_is_per_chunk_capped_by_max_rank_and_bounded_by_the_tokens_read(tiny_base) -> None:
    cfg = MemoryConfig(layers=(0, 1), rank=4, chunk_tokens=16, general_tokens=256)
    stats = key_statistics(tiny_base, cfg)
    chunks = len(chat_chunks(tiny_base.tokenizer, DOC, 16))
    assert memory_lora(tiny_base, DOC, cfg, stats).rank == 4 * chunks
    assert memory_lora(tiny_base, DOC, cfg, stats, max_chunks=2).rank == 8
    capped = MemoryConfig(layers=(0, 1), rank=4, max_rank=6, chunk_tokens=16, general_tokens=256)
    assert memory_lora(tiny_base, DOC, capped, stats, max_chunks=2).rank == 6
    wide = MemoryConfig(layers=(1,), rank=500, chunk_tokens=16, general_tokens=256)
    assert memory_lora(tiny_base, "Alder Bay", wide, key_statistics(tiny_base, wide)).rank <= 4


def test_memory_generator_names_itself_by_its_config_and_refuses_bad_input(tiny_base) -> None:
    gen = make_generator("memory", tiny_base, {"layers": [1], "general_tokens": 256})
    assert isinstance(gen, MemoryGenerator) and gen.name == "memory"
    out = gen.generate(DOC)
    assert out.seconds > 0 and out.weights.target_names == ["down_proj"]
    other = make_generator("memory", tiny_base, {"layers": [1], "general_tokens": 256, "scale": 0.5})
    assert gen.describe()["fingerprint"] == gen.fingerprint() != other.fingerprint()
    with pytest.raises(HypernetInputError, match="document is empty"):
        gen.generate(" \n")
    with pytest.raises(GeneratorError, match=r"generator 'memory': unknown memory option\(s\) \['steps'\]"):
        make_generator("memory", tiny_base, {"steps": 3})
    with pytest.raises(GeneratorError, match=r"memory layers \[7\] do not exist: the model has 2 layers"):
        make_generator("memory", tiny_base, {"layers": [7]})
    with pytest.raises(GeneratorError, match="invalid value for ridge"):
        make_generator("memory", tiny_base, {"ridge": 0})
    with pytest.raises(GeneratorError, match="invalid value for ridge_per"):
        make_generator("memory", tiny_base, {"ridge_per": "document"})


def test_statistics_are_computed_once_per_configuration(tiny_base) -> None:
    cfg = MemoryConfig(layers=(1,), general_tokens=256)
    first = key_statistics(tiny_base, cfg)
    assert key_statistics(tiny_base, cfg) is first
    (C_inv,) = first.values()
    assert C_inv.shape == (128, 128) and torch.linalg.eigvalsh(C_inv.double()).min() > 0


def test_the_low_rank_solve_equals_the_direct_ridge_solution() -> None:
    """The n-dimensional solve (push-through identity; the truncation exact at this size) gives MEMIT's
    d-dimensional one."""
    g = torch.Generator().manual_seed(0)
    K, V = torch.randn(20, 48, generator=g), torch.randn(20, 12, generator=g)
    X = torch.randn(200, 48, generator=g)
    C = X.T @ X / 200
    direct = V.T @ K @ torch.linalg.inv(K.T @ K + 0.5 * 20 * C)  # [d_out, d_in]
    B, A = ridge_factors(K, V, torch.linalg.inv(C), ridge=0.5, rank=20)
    torch.testing.assert_close(B @ A, direct, atol=1e-4, rtol=1e-3)
    B4, A4 = ridge_factors(K, V, torch.linalg.inv(C), ridge=0.5, rank=4)
    S = torch.linalg.svdvals(direct)
    assert torch.linalg.matrix_norm(B4 @ A4 - direct, ord=2) == pytest.approx(S[4].item(), rel=1e-3)


def test_the_randomized_truncation_is_near_optimal_and_deterministic() -> None:
    """Wide problems take the randomized SVD: its error is within 2% of the exact rank-r truncation's
    (Eckart-Young), and the same product gives the same factors every time (a seeded sketch)."""
    g = torch.Generator().manual_seed(1)
    decay = torch.logspace(0, -2, 80)  # a slowly decaying spectrum, like a document's update
    L = torch.randn(60, 80, generator=g) * decay
    R = torch.randn(80, 100, generator=g)
    B, A = truncated_svd(L, R, rank=8)
    assert B.shape == (60, 8) and A.shape == (8, 100)
    S = torch.linalg.svdvals(L @ R)
    optimal = S[8:].square().sum().sqrt()
    assert torch.linalg.matrix_norm(L @ R - B @ A) <= 1.02 * optimal
    B2, A2 = truncated_svd(L, R, rank=8)
    assert torch.equal(B @ A, B2 @ A2)
