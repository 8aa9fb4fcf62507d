"""Base-model resolution, loading, weight hashing and chat formatting (tiny model; SmolLM2 when slow)."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest
import torch

from hypernet import base_model as bm
from hypernet.base_model import (
    DEFAULT_BASE_MODEL,
    BaseModelError,
    chat_ids,
    load_base_model,
    resolve_base_model,
    weights_sha256,
)
from hypernet.tiny import make_tiny_model, make_tiny_tokenizer
from tests.fixtures.models import model_cache_dir


def test_unknown_spec_raises_naming_it(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="base model 'no/such-model' not found: not a known alias"):
        resolve_base_model("no/such-model", tmp_path)


def test_local_dir_resolves_to_itself(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert resolve_base_model(str(tiny_model_dir), tmp_path) == tiny_model_dir


def test_loaded_model_is_frozen_float32_in_eval_mode(tiny_base) -> None:
    params = list(tiny_base.model.parameters())
    assert not tiny_base.model.training
    assert not any(p.requires_grad for p in params)
    assert {p.dtype for p in params} == {torch.float32}
    assert tiny_base.device == "cpu"


def test_weights_sha256_is_the_safetensors_digest_and_is_cached(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "m")
    expected = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert weights_sha256(model_dir) == expected
    assert (model_dir / bm.MARKER).is_file()
    assert load_base_model(str(model_dir), tmp_path).weights_sha256 == expected


def test_weights_sha256_is_recomputed_when_the_weights_change(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "m")
    first = weights_sha256(model_dir)
    with (model_dir / "model.safetensors").open("ab") as fh:
        fh.write(b"\0")
    assert weights_sha256(model_dir) != first


def test_dir_without_safetensors_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "m")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(BaseModelError, match="no \\*.safetensors"):
        load_base_model(str(model_dir), tmp_path)


def test_chat_ids_writes_chatml_without_a_system_turn(tiny_base) -> None:
    tok = tiny_base.tokenizer
    prompt, answer = chat_ids(tok, "Who wrote the letters?", "Mara Quill.")
    assert tok.decode(prompt) == "<|im_start|>user\nWho wrote the letters?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(answer) == "Mara Quill."
    assert chat_ids(tok, "Who?")[1] == []


def test_special_tokens_inside_the_text_stay_plain_text(tiny_base) -> None:
    tok = tiny_base.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    prompt, answer = chat_ids(tok, "a doc quoting <|im_end|> here", "and <|im_start|> there")
    assert prompt.count(im_end) == 1 and tok.convert_tokens_to_ids("<|im_start|>") not in answer
    assert tok.decode(answer) == "and <|im_start|> there"


def test_chat_ids_falls_back_to_the_template_when_not_chatml() -> None:
    tok = make_tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:"
    prompt, answer = chat_ids(tok, "Who wrote the letters?", " Mara")
    assert tok.decode(prompt) == "Q: Who wrote the letters?\nA:"
    assert tok.decode(answer) == " Mara"


@pytest.mark.slow
def test_smollm2_second_resolve_reuses_the_cache(smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker, weights = smollm2_dir / bm.MARKER, smollm2_dir / "model.safetensors"
    before = (marker.stat().st_mtime_ns, weights.stat().st_mtime_ns)

    def no_conversion(*args, **kwargs):
        raise AssertionError("the GGUF was read again")

    monkeypatch.setattr(bm, "_convert_gguf", no_conversion)
    start = time.perf_counter()
    assert resolve_base_model(DEFAULT_BASE_MODEL, model_cache_dir()) == smollm2_dir
    assert resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct", model_cache_dir()) == smollm2_dir
    assert time.perf_counter() - start < 1.0
    assert (marker.stat().st_mtime_ns, weights.stat().st_mtime_ns) == before
    info = bm._read_marker(smollm2_dir)
    assert info["model_id"] == DEFAULT_BASE_MODEL
    assert info["weights_sha256"] == weights_sha256(smollm2_dir)
    assert len(info["source_gguf_sha256"]) == 64


@pytest.mark.slow
def test_smollm2_answers_the_capital_of_france(smollm2_base) -> None:
    tok = smollm2_base.tokenizer
    prompt, _ = chat_ids(tok, "What is the capital of France?")
    with torch.no_grad():
        out = smollm2_base.model.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id
        )
    assert "Paris" in tok.decode(out[0, len(prompt) :])


def test_tiny_model_is_deterministic_given_the_seed(tmp_path: Path) -> None:
    a, b, c = (make_tiny_model(tmp_path / name, seed=s) for name, s in (("a", 0), ("b", 0), ("c", 1)))
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
