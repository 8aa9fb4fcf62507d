"""The `hypernet` and `hypernet+cd` generators on the tiny Llama: a briefly trained checkpoint is loaded
by the factory, generates adapters that PEFT loads unchanged, and names itself by its checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from hypernet.adapter import save_adapter
from hypernet.base_model import load_base_model
from hypernet.generators import (
    GeneratorError,
    HypernetCDGenerator,
    HypernetGenerator,
    HypernetInputError,
    make_generator,
)
from hypernet.lora import applied
from hypernet.model import checkpoint_sha256, load_hypernet, save_hypernet
from hypernet.tiny import make_tiny_model
from tests.fixtures.hypernet import TINY_NET, train_tiny_checkpoint

NET = TINY_NET
NETWORK_ONLY = {"memory": False}  # the network's own adapter, without the document's memory
DOC = (
    "The river town of Alder Bay was founded in 1821 by fishermen from the northern coast. "
    "Engineers built a new bridge across the river in 1998, and it is 240 metres long."
)


@pytest.fixture(scope="module")
def checkpoint(tiny_base, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny hypernetwork trained for a few steps (enough to move its generated path off zero)."""
    final = train_tiny_checkpoint(tiny_base, tmp_path_factory.mktemp("hypernet-run"))
    assert load_hypernet(final).gen_scale.abs().sum() > 0
    return final


def _logits(model, weights, ids):
    with torch.no_grad(), applied(model, weights):
        return model(input_ids=ids).logits


def test_hypernet_generator_exports_an_adapter_peft_loads_with_equal_logits(
    tiny_base, tiny_model_dir: Path, checkpoint: Path, tmp_path: Path
) -> None:
    gen = make_generator("hypernet", tiny_base, {"checkpoint": str(checkpoint)} | NETWORK_ONLY)
    assert isinstance(gen, HypernetGenerator) and gen.name == "hypernet"
    out = gen.generate(DOC)
    chunks = int(out.metrics["chunks"])
    assert chunks >= 2  # 32-token chunks: the document spans several, concatenated along rank
    assert out.weights.rank == chunks * NET["rank"] + NET["bias_rank"] and out.weights.scaling == 1.0
    assert out.seconds > 0 and all(isinstance(v, float) for v in out.metrics.values())
    save_adapter(out.weights, tmp_path / "a", str(tiny_model_dir), {"document": "doc"})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(1))
    ours, plain = _logits(model, out.weights, ids), _logits(model, None, ids)
    assert (ours - plain).abs().max() > 1e-3  # the generated adapter changes the model
    peft = PeftModel.from_pretrained(model, tmp_path / "a").eval()
    with torch.no_grad():
        theirs = peft(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_generated_adapter_depends_on_the_document(tiny_base, checkpoint: Path) -> None:
    gen = make_generator("hypernet", tiny_base, {"checkpoint": str(checkpoint)} | NETWORK_ONLY)
    a = gen.generate("Mara Quill was born in 1954 and lives by the sea with two cats.").weights
    b = gen.generate("The company builds pumps, valves and water filters in the capital.").weights
    path = a.modules[0]
    generated = slice(0, NET["rank"])  # the first chunk's rows; the bias rows are shared by design
    assert not torch.allclose(a.A[path][generated], b.A[path][generated])
    torch.testing.assert_close(a.A[path][-NET["bias_rank"] :], b.A[path][-NET["bias_rank"] :])


def test_long_documents_are_cut_at_max_chunks_with_a_note(tiny_base, checkpoint: Path) -> None:
    opts = {"checkpoint": str(checkpoint), "max_chunks": 2} | NETWORK_ONLY
    gen = make_generator("hypernet", tiny_base, opts)
    out = gen.generate(DOC * 4)
    assert out.metrics["chunks"] == 2.0 and out.weights.rank == 2 * NET["rank"] + NET["bias_rank"]
    assert out.notes and "first 2 chunks" in out.notes[0]


def test_a_batch_through_the_hypernetwork_equals_one_by_one(tiny_base, checkpoint: Path) -> None:
    """A worker's batch goes through the hypernetwork in one pass; documents of different lengths (one
    chunk, several) get the adapters they get alone, rank included."""
    gen = make_generator("hypernet", tiny_base, {"checkpoint": str(checkpoint), "max_chunks": 3})
    texts = [DOC, DOC * 4, "Mara Quill was born in 1954 and lives by the sea with two cats."]
    batched = gen.generate_many(texts)
    for text, many in zip(texts, batched, strict=True):
        one = gen.generate(text)
        assert many.weights.rank == one.weights.rank and many.notes == one.notes
        for path in one.weights.modules:
            torch.testing.assert_close(many.weights.A[path], one.weights.A[path], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(many.weights.B[path], one.weights.B[path], atol=1e-5, rtol=1e-4)
    assert make_generator("hypernet+cd", tiny_base, {"checkpoint": str(checkpoint)}).generate_many is None


def test_memory_adds_the_documents_closed_form_update_to_the_networks(tiny_base, checkpoint: Path) -> None:
    """With the memory on (the default) the adapter is the network's update plus the document's memory
    (``hypernet.memory``, read in the network's chunks); the option is part of the fingerprint."""
    opts = {"checkpoint": str(checkpoint)}
    both = make_generator("hypernet", tiny_base, opts)
    network = make_generator("hypernet", tiny_base, opts | NETWORK_ONLY)
    memory = make_generator("memory", tiny_base, {"chunk_tokens": NET["chunk_tokens"]})
    combined, alone, mem = (g.generate(DOC).weights for g in (both, network, memory))
    assert set(mem.modules) < set(combined.modules) == set(alone.modules)
    for path in combined.modules:
        expected = alone.delta(path) + (mem.delta(path) if path in mem.A else 0)
        torch.testing.assert_close(combined.delta(path), expected, atol=1e-5, rtol=1e-4)
    assert both.fingerprint() != network.fingerprint()
    stronger = make_generator("hypernet", tiny_base, opts | {"memory": {"scale": 0.2}})
    assert stronger.fingerprint() not in {both.fingerprint(), network.fingerprint()}
    with pytest.raises(GeneratorError, match=r"unknown memory option\(s\) \['depth'\]"):
        make_generator("hypernet", tiny_base, opts | {"memory": {"depth": 3}})
    with pytest.raises(GeneratorError, match=r"generator 'hypernet\+cd': memory layers \[5\] do not exist"):
        make_generator("hypernet+cd", tiny_base, opts | {"memory": {"layers": [5]}})


def test_empty_document_is_refused_by_name(tiny_base, checkpoint: Path) -> None:
    gen = make_generator("hypernet", tiny_base, {"checkpoint": str(checkpoint)})
    with pytest.raises(HypernetInputError, match="document is empty"):
        gen.generate("  \n ")


def test_hypernet_plus_cd_refines_the_generated_adapter(tiny_base, checkpoint: Path) -> None:
    gen = make_generator("hypernet+cd", tiny_base, {"checkpoint": str(checkpoint), "steps": 8, "lr": 1e-2})
    assert isinstance(gen, HypernetCDGenerator) and gen.name == "hypernet+cd"
    steps: list[int] = []
    out = gen.generate(DOC, progress=lambda step, loss: steps.append(step))
    one_pass = make_generator("hypernet", tiny_base, {"checkpoint": str(checkpoint)}).generate(DOC)
    assert steps == list(range(1, 9)) and out.metrics["steps"] == 8.0
    assert out.metrics["kl_end"] < out.metrics["kl_start"]
    assert out.weights.rank == one_pass.weights.rank and out.weights.scaling == 1.0
    path = out.weights.modules[0]
    assert not torch.allclose(out.weights.B[path], one_pass.weights.B[path])


def test_fingerprint_covers_checkpoint_base_and_config(tiny_base, checkpoint: Path, tmp_path: Path) -> None:
    opts = {"checkpoint": str(checkpoint)}
    gen = make_generator("hypernet", tiny_base, opts)
    info = gen.describe()
    assert info["checkpoint_sha256"] == checkpoint_sha256(checkpoint) and info["kind"] == "hypernet"
    assert info["fingerprint"] == gen.fingerprint() and "checkpoint" not in info["config"]
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy)  # same bytes elsewhere: same fingerprint
    assert make_generator("hypernet", tiny_base, {"checkpoint": str(copy)}).fingerprint() == gen.fingerprint()
    assert make_generator("hypernet", tiny_base, opts | {"max_chunks": 3}).fingerprint() != gen.fingerprint()
    refined = make_generator("hypernet+cd", tiny_base, opts)
    assert refined.fingerprint() != gen.fingerprint()
    three_steps = make_generator("hypernet+cd", tiny_base, opts | {"steps": 3})
    assert three_steps.fingerprint() != refined.fingerprint()
    net = load_hypernet(checkpoint)
    with torch.no_grad():
        net.gen_scale.add_(1.0)
    save_hypernet(net, tmp_path / "other")
    other = make_generator("hypernet", tiny_base, {"checkpoint": str(tmp_path / "other")})
    assert other.fingerprint() != gen.fingerprint()


def test_checkpoint_of_another_base_model_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    other = load_base_model(str(make_tiny_model(tmp_path / "m", seed=1)), tmp_path, device="cpu")
    with pytest.raises(GeneratorError, match="generator 'hypernet'.*trained for base model"):
        make_generator("hypernet", other, {"checkpoint": str(checkpoint)})


def test_missing_checkpoint_and_unknown_options_are_named(tiny_base, checkpoint: Path, tmp_path) -> None:
    with pytest.raises(GeneratorError, match="needs a trained checkpoint: none is shipped for base model"):
        make_generator("hypernet+cd", tiny_base, {})
    with pytest.raises(GeneratorError, match="no hypernetwork checkpoint at"):
        make_generator("hypernet", tiny_base, {"checkpoint": str(tmp_path / "nothing")})
    with pytest.raises(GeneratorError, match=r"unknown option\(s\) \['steps'\]"):
        make_generator("hypernet", tiny_base, {"checkpoint": str(checkpoint), "steps": 3})
    with pytest.raises(GeneratorError, match="invalid value for max_chunks"):
        make_generator("hypernet", tiny_base, {"checkpoint": str(checkpoint), "max_chunks": 0})
