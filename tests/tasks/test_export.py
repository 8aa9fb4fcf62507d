"""`instill export` writes the production set for vLLM / LoRAX / PEFT; the validator knows vLLM's rules."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from tests.fixtures.kb import instill
from tests.fixtures.serving import served_kb, served_kb_session  # noqa: F401


def test_vllm_export_writes_folders_arguments_and_a_json_list(served_kb, tmp_path):  # noqa: F811
    from hypernet.adapter import adapter_sha256

    out = tmp_path / "vllm"
    code, output = instill("export", str(out), "--format", "vllm", "--config", str(served_kb.config))
    assert code == 0, output
    index = json.loads((out / "adapters.json").read_text())
    assert len(index["adapters"]) == 3 and index["problems"] == [] and index["max_lora_rank"] == 8
    for entry in index["adapters"]:
        assert adapter_sha256(out / entry["name"]) == entry["adapter_sha256"]
    modules = json.loads((out / "lora-modules.json").read_text())
    assert {m["name"] for m in modules} == {e["name"] for e in index["adapters"]}
    args = (out / "vllm-args.txt").read_text().split()
    assert args[:5] == ["--enable-lora", "--max-loras", "3", "--max-lora-rank", "8"]
    assert args[5] == "--lora-modules" and all("=" in a for a in args[6:])
    assert "vllm serve" in output


@pytest.mark.parametrize("fmt, extra", [("lorax", "lorax.json"), ("peft", None)])
def test_lorax_and_peft_exports(served_kb, tmp_path, fmt, extra):  # noqa: F811
    from peft import PeftConfig

    out = tmp_path / fmt
    code, output = instill("export", str(out), "--format", fmt, "--config", str(served_kb.config))
    assert code == 0, output
    index = json.loads((out / "adapters.json").read_text())
    for entry in index["adapters"]:
        assert PeftConfig.from_pretrained(entry["path"]).r == 8
    if extra:
        assert [a["adapter_source"] for a in json.loads((out / extra).read_text())] == ["local"] * 3


def test_validator_passes_a_conforming_adapter_and_names_every_broken_rule(served_kb, tmp_path):  # noqa: F811
    from tasks.export import validate_vllm

    out = tmp_path / "peft"
    assert instill("export", str(out), "--config", str(served_kb.config))[0] == 0
    good = out / json.loads((out / "adapters.json").read_text())["adapters"][0]["name"]
    assert validate_vllm(good, max_lora_rank=8) == []
    assert instill("validate-adapter", str(good), "--max-lora-rank", "8")[0] == 0

    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    config.update(
        r=64,
        bias="lora_only",
        modules_to_save=["lm_head"],
        use_dora=True,
        target_modules=["down_proj", "mlp.router"],
    )
    (bad / "adapter_config.json").write_text(json.dumps(config))
    weights = load_file(bad / "adapter_model.safetensors")
    key = next(iter(weights))
    weights[key.replace("lora_A.weight", "lora_B.bias")] = weights[key][:, 0].clone()
    save_file(weights, bad / "adapter_model.safetensors")
    rules = {p.rule for p in validate_vllm(bad, max_lora_rank=16)}
    assert rules == {"rank", "bias", "modules_to_save", "dora", "target_modules"}
    assert "--max-lora-rank 64" in str(next(p for p in validate_vllm(bad) if p.rule == "rank"))
    assert [p.rule for p in validate_vllm(good, max_lora_rank=12)] == ["max_lora_rank"]
    code, output = instill("validate-adapter", str(bad))
    assert code == 1 and "modules_to_save" in output and "DoRA" in output
