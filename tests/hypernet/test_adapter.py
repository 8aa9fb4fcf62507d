"""The adapter folder: PEFT loads it and computes what ``applied()`` computes; lineage and hashing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from hypernet.adapter import (
    AdapterError,
    adapter_sha256,
    load_adapter,
    read_lineage,
    save_adapter,
    update_lineage,
)
from hypernet.lora import LoraWeights, applied, apply_together, concat_rank, target_linears


def random_lora(model, rank: int, scaling: float, seed: int) -> LoraWeights:
    gen = torch.Generator().manual_seed(seed)
    linears = target_linears(model, "down_proj")
    A = {p: torch.randn(rank, m.in_features, generator=gen) * 0.3 for p, m in linears.items()}
    B = {p: torch.randn(m.out_features, rank, generator=gen) * 0.3 for p, m in linears.items()}
    return LoraWeights(A, B, scaling)


@pytest.fixture()
def base(tiny_model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture()
def ids() -> torch.Tensor:
    return torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(1))


def peft_logits(base, folder: Path, ids: torch.Tensor) -> torch.Tensor:
    peft = PeftModel.from_pretrained(base, folder).eval()
    with torch.no_grad():
        out = peft(input_ids=ids).logits
    peft.unload()  # leaves `base` as it was for the next comparison
    return out


def applied_logits(base, weights: LoraWeights, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), applied(base, weights):
        return base(input_ids=ids).logits


def test_peft_loads_the_folder_and_matches_applied(base, ids, tmp_path: Path) -> None:
    weights = random_lora(base, rank=4, scaling=2.0, seed=0)
    save_adapter(weights, tmp_path / "a", "tiny", {"document": "d.md"})
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    ours = applied_logits(base, weights, ids)
    theirs = peft_logits(base, tmp_path / "a", ids)
    assert (ours - plain).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_rank_concatenated_chunks_export_exactly(base, ids, tmp_path: Path) -> None:
    parts = [random_lora(base, 4, 2.0, seed=1), random_lora(base, 8, 0.5, seed=2)]
    combined = concat_rank(parts)
    save_adapter(combined, tmp_path / "a", "tiny", {})
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (12, 12.0)
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        with applied(base, parts[0]), applied(base, parts[1]):  # both chunks at once: nested hooks
            both = base(input_ids=ids).logits
    assert (both - plain).abs().max() > 1e-2
    torch.testing.assert_close(peft_logits(base, tmp_path / "a", ids), both, atol=1e-4, rtol=0)


def test_zero_padded_modules_are_saved_at_their_own_rank(base, ids, tmp_path: Path) -> None:
    """``apply_together`` pads every module to the largest rank; the file keeps each module's own rank
    (PEFT's ``rank_pattern``), PEFT loads it to the same logits, and loading pads it again."""
    everywhere = random_lora(base, 4, 2.0, seed=3)
    wide = random_lora(base, 12, 0.5, seed=4)
    path = wide.modules[-1]
    together = apply_together([everywhere, LoraWeights({path: wide.A[path]}, {path: wide.B[path]}, 0.5)])
    assert together.rank == 16
    save_adapter(together, tmp_path / "a", "tiny", {})
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 4.0)
    assert config["rank_pattern"] == {path: 16} and config["alpha_pattern"] == {path: 16.0}
    with safe_open(str(tmp_path / "a" / "adapter_model.safetensors"), "pt") as f:
        ranks = {k: f.get_slice(k).get_shape()[0] for k in f.keys() if "lora_A" in k}  # noqa: SIM118
    assert ranks == {f"base_model.model.{p}.lora_A.weight": 16 if p == path else 4 for p in together.modules}
    ours = applied_logits(base, together, ids)
    assert (ours - applied_logits(base, everywhere, ids)).abs().max() > 1e-2  # the wide module counts
    torch.testing.assert_close(peft_logits(base, tmp_path / "a", ids), ours, atol=1e-4, rtol=0)
    loaded = load_adapter(tmp_path / "a")
    assert loaded.rank == 16
    for p in together.modules:
        torch.testing.assert_close(loaded.delta(p), together.delta(p))


def test_loading_reads_alpha_pattern_keys_the_way_peft_matches_them(base, tmp_path: Path) -> None:
    """A PEFT-written pattern key is a suffix of the module path (a regular expression): that module's
    scaling is its alpha over its rank; the others keep ``lora_alpha / r``."""
    weights = random_lora(base, 4, 2.0, seed=5)
    save_adapter(weights, tmp_path / "a", "tiny", {})
    path = weights.modules[-1]
    config_path = tmp_path / "a" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    suffix = path.split(".", 1)[1]  # "layers.N.mlp.down_proj"
    config_path.write_text(json.dumps(config | {"alpha_pattern": {suffix: 32.0}}))
    loaded = load_adapter(tmp_path / "a")
    torch.testing.assert_close(loaded.delta(path), weights.delta(path) * 4)  # 32 / 4 against 8 / 4
    for p in weights.modules[:-1]:
        torch.testing.assert_close(loaded.delta(p), weights.delta(p))


def test_folder_has_peft_config_keys_and_lineage(base, tmp_path: Path) -> None:
    weights = random_lora(base, 4, 2.0, seed=0)
    sha = save_adapter(weights, tmp_path / "a", "HuggingFaceTB/SmolLM2-135M-Instruct", {"b": 1, "a": 2})
    folder = tmp_path / "a"
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "instill.json",
    ]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["target_modules"] == ["down_proj"] and config["lora_alpha"] == 8.0
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert list(json.loads((folder / "instill.json").read_text())) == ["a", "b"]
    assert sha == adapter_sha256(folder)


def test_load_adapter_round_trips(base, tmp_path: Path) -> None:
    weights = random_lora(base, 4, 2.0, seed=0)
    save_adapter(weights, tmp_path / "a", "tiny", {})
    loaded = load_adapter(tmp_path / "a")
    assert loaded.scaling == pytest.approx(2.0) and loaded.modules == weights.modules
    for p in weights.modules:
        assert torch.equal(loaded.A[p], weights.A[p]) and torch.equal(loaded.B[p], weights.B[p])


def test_sha_ignores_lineage_updates_but_not_weights(base, tmp_path: Path) -> None:
    weights = random_lora(base, 4, 2.0, seed=0)
    sha = save_adapter(weights, tmp_path / "a", "tiny", {"document": "d.md"})
    merged = update_lineage(tmp_path / "a", {"qa": {"passed": True}})
    assert merged == {"document": "d.md", "qa": {"passed": True}} == read_lineage(tmp_path / "a")
    assert adapter_sha256(tmp_path / "a") == sha
    assert save_adapter(weights, tmp_path / "b", "tiny", {"other": 1}) == sha  # same weights, same identity
    assert save_adapter(random_lora(base, 4, 2.0, seed=9), tmp_path / "c", "tiny", {}) != sha


def test_saving_over_an_existing_folder_replaces_it(base, tmp_path: Path) -> None:
    first = save_adapter(random_lora(base, 4, 2.0, seed=0), tmp_path / "a", "tiny", {"v": 1})
    second = save_adapter(random_lora(base, 4, 2.0, seed=1), tmp_path / "a", "tiny", {"v": 2})
    assert first != second and adapter_sha256(tmp_path / "a") == second
    assert read_lineage(tmp_path / "a") == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temp or old folders left


def test_batched_weights_are_refused(base, tmp_path: Path) -> None:
    w = random_lora(base, 4, 2.0, seed=0)
    batched = LoraWeights({p: a[None] for p, a in w.A.items()}, {p: b[None] for p, b in w.B.items()}, 2.0)
    with pytest.raises(AdapterError, match="batched"):
        save_adapter(batched, tmp_path / "a", "tiny", {})


def test_loading_a_folder_without_safetensors_names_it(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "lora_alpha": 8}')
    with pytest.raises(AdapterError, match="adapter_model.safetensors is missing"):
        load_adapter(tmp_path / "a")
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        load_adapter(tmp_path / "nowhere")
