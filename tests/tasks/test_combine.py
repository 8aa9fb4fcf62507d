"""tasks.combine gives exactly what PEFT's add_weighted_adapter gives, for cat and linear."""

from __future__ import annotations

import pytest
import torch


def _random_adapter(tiny_base, seed: int, scaling: float):
    from hypernet.lora import LoraWeights, target_linears

    g = torch.Generator().manual_seed(seed)
    mods = target_linears(tiny_base.model)
    A = {p: torch.randn(8, m.in_features, generator=g) * 0.1 for p, m in mods.items()}
    B = {p: torch.randn(m.out_features, 8, generator=g) * 0.1 for p, m in mods.items()}
    return LoraWeights(A, B, scaling)


@pytest.mark.parametrize("how", ["cat", "linear"])
def test_combine_matches_peft_add_weighted_adapter(tiny_base, tiny_model_dir, tmp_path, how):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hypernet.adapter import save_adapter
    from tasks.combine import combine

    parts = [_random_adapter(tiny_base, 1, 2.0), _random_adapter(tiny_base, 2, 0.5)]
    for i, w in enumerate(parts):
        save_adapter(w, tmp_path / f"a{i}", str(tiny_model_dir), {})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = PeftModel.from_pretrained(model, tmp_path / "a0", adapter_name="a0")
    peft.load_adapter(tmp_path / "a1", adapter_name="a1")
    peft.add_weighted_adapter(["a0", "a1"], [0.7, 1.3], adapter_name="mix", combination_type=how)
    ours = combine(parts, [0.7, 1.3], how)
    assert ours.scaling == 1.0 and ours.rank == (16 if how == "cat" else 8)
    for path in ours.modules:
        layer = peft.base_model.model.get_submodule(path)
        assert layer.scaling["mix"] == pytest.approx(1.0)
        torch.testing.assert_close(layer.lora_A["mix"].weight, ours.A[path])
        torch.testing.assert_close(layer.lora_B["mix"].weight, ours.B[path])


def test_cat_is_the_weighted_sum_of_the_updates(tiny_base):
    from tasks.combine import combine

    a, b = _random_adapter(tiny_base, 3, 2.0), _random_adapter(tiny_base, 4, 1.0)
    mixed = combine([a, b], [1.0, 0.5], "cat")
    path = a.modules[0]
    torch.testing.assert_close(mixed.delta(path), a.delta(path) + 0.5 * b.delta(path))
    with pytest.raises(ValueError, match="unknown combination"):
        combine([a, b], how="svd")  # type: ignore[arg-type]
