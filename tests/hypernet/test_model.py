"""The Doc-to-LoRA network on the tiny Llama: zero start, chunking, the shared-fraction loss, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hypernet.features import FeatureConfig, FeatureEncoder
from hypernet.lora import applied
from hypernet.model import (
    CheckpointError,
    Hypernet,
    HypernetConfig,
    checkpoint_sha256,
    load_hypernet,
    save_hypernet,
    shared_fraction,
)

TEXT = "Mara Quill was born in 1936. She works as a teacher in Alder Bay. " * 3
SMALL = {"d": 32, "n_latents": 4, "n_blocks": 1, "n_heads": 4, "rank": 2, "bias_rank": 3}


def _net(tiny_base, seed: int = 0, **overrides) -> Hypernet:
    torch.manual_seed(seed)
    return Hypernet(HypernetConfig.from_base_model(tiny_base.model, **(SMALL | overrides)))


def _perturb(net: Hypernet) -> None:
    """Give the zero-initialised scales and bias B values, as training would."""
    with torch.no_grad():
        net.gen_scale.fill_(0.05)
        net.bias_B.normal_(0, 0.1)


def _logits(tiny_base, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return tiny_base.model(input_ids=ids).logits


def test_config_reads_layers_and_target_dims_from_the_model(tiny_base):
    cfg = HypernetConfig.from_base_model(tiny_base.model)
    assert cfg.module_paths == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert (cfg.d_model, cfg.d_in, cfg.d_out) == (64, 128, 64)
    assert cfg.alpha == pytest.approx(2 * 8**1.5)


def test_untrained_network_leaves_the_model_logits_exactly_unchanged(tiny_base):
    net = _net(tiny_base)
    adapter = net.generate(FeatureEncoder(tiny_base).encode(TEXT))
    assert all(torch.count_nonzero(b) == 0 for b in adapter.B.values())
    ids = torch.tensor([tiny_base.tokenizer("Where was Mara Quill born?")["input_ids"]])
    with applied(tiny_base.model, adapter):
        adapted = _logits(tiny_base, ids)
    assert torch.equal(adapted, _logits(tiny_base, ids))


@pytest.mark.parametrize("merge", ["sum", "mean"])
def test_multi_chunk_document_gets_rank_chunks_times_r_plus_bias(tiny_base, merge):
    net = _net(tiny_base, chunk_merge=merge)
    _perturb(net)
    chunks = FeatureEncoder(tiny_base, FeatureConfig(chunk_tokens=16)).encode(TEXT)
    assert len(chunks) >= 3
    adapter = net.generate(chunks)
    assert adapter.rank == len(chunks) * 2 + 3
    for path in net.cfg.module_paths:
        assert adapter.A[path].shape == (adapter.rank, 128)
        assert adapter.B[path].shape == (64, adapter.rank)
    # concatenation along rank = sum (or mean) of the chunks' updates, with the bias added exactly once
    parts = [net.generate([c]) for c in chunks]
    bias = net.bias_only()
    path = net.cfg.module_paths[1]
    weight = 1.0 if merge == "sum" else 1.0 / len(chunks)
    expected = weight * sum(p.delta(path) - bias.delta(path) for p in parts) + bias.delta(path)
    torch.testing.assert_close(adapter.delta(path), expected, atol=1e-5, rtol=1e-4)
    # training's batched factors for the same document give the same update
    A, B = net.document_factors([chunks])
    generated = B[0, 1] @ A[0, 1]
    torch.testing.assert_close(generated + bias.delta(path), adapter.delta(path), atol=1e-5, rtol=1e-4)


def test_batched_training_adapter_matches_generate(tiny_base):
    net = _net(tiny_base)
    _perturb(net)
    encoder = FeatureEncoder(tiny_base)
    texts = ["Kalo Brimsen was born in 1921.", "Dara Voun works as a baker in Zelford."]
    single = [net.generate(encoder.encode(t)) for t in texts]
    from hypernet.features import pad_features

    A, B = net(*pad_features([encoder.encode(t)[0] for t in texts]))
    batched = net.batch_adapter(A, B, torch.tensor([1, 0]))
    path = net.cfg.module_paths[0]
    torch.testing.assert_close(batched.delta(path)[0], single[1].delta(path), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched.delta(path)[1], single[0].delta(path), atol=1e-5, rtol=1e-4)


def test_features_are_normalised_per_token_and_cached_on_disk(tiny_base, tmp_path):
    first = FeatureEncoder(tiny_base, cache_dir=tmp_path).encode(TEXT)
    (feat,) = first
    assert feat.dtype == torch.float16 and feat.shape[0] == 2
    assert feat.float().mean(-1).abs().max() < 1e-2
    assert (feat.float().std(-1, unbiased=False) - 1).abs().max() < 1e-2
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    again = FeatureEncoder(tiny_base, cache_dir=tmp_path)
    again.encode_ids = None  # a cache hit must not run the model
    assert torch.equal(again.encode(TEXT)[0], feat)


def test_shared_fraction_is_one_for_identical_updates_and_zero_when_they_cancel():
    torch.manual_seed(0)
    A, B = torch.randn(1, 3, 2, 10), torch.randn(1, 3, 6, 2)
    same = shared_fraction(A.repeat(4, 1, 1, 1), B.repeat(4, 1, 1, 1))
    cancel = shared_fraction(A.repeat(2, 1, 1, 1), torch.cat([B, -B]))
    assert same.item() == pytest.approx(1.0, abs=1e-5)
    assert cancel.item() == pytest.approx(0.0, abs=1e-5)
    A, B = torch.randn(5, 3, 2, 10), torch.randn(5, 3, 6, 2)
    dense = B @ A  # [N, L, d_out, d_in]
    expected = (dense.mean(0).pow(2).sum((-1, -2)) / dense.pow(2).sum((-1, -2)).mean(0)).mean()
    assert shared_fraction(A, B).item() == pytest.approx(expected.item(), rel=1e-4)


def test_checkpoint_round_trip_is_safetensors_and_json_only(tiny_base, tmp_path):
    net = _net(tiny_base)
    _perturb(net)
    sha = save_hypernet(net, tmp_path / "ckpt", training={"steps": 3})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["hypernet.json", "hypernet.safetensors"]
    loaded = load_hypernet(tmp_path / "ckpt")
    assert loaded.cfg == net.cfg
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    chunks = FeatureEncoder(tiny_base).encode(TEXT)
    path = net.cfg.module_paths[0]
    assert torch.equal(loaded.generate(chunks).B[path], net.generate(chunks).B[path])
    assert checkpoint_sha256(tmp_path / "ckpt") == sha
    with torch.no_grad():
        net.gen_scale.add_(1)
    assert save_hypernet(net, tmp_path / "other") != sha


def test_a_network_refuses_a_base_model_it_was_not_trained_for(tiny_base):
    net = _net(tiny_base, base_model_id="tiny", base_weights_sha256=tiny_base.weights_sha256)
    net.check_base(tiny_base.weights_sha256)
    with pytest.raises(CheckpointError, match="tiny"):
        net.check_base("0" * 64)


def test_loading_a_missing_or_mismatched_checkpoint_names_the_problem(tiny_base, tmp_path: Path):
    with pytest.raises(CheckpointError, match="missing"):
        load_hypernet(tmp_path)
    (tmp_path / "hypernet.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_hypernet(tmp_path)
