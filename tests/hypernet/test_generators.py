"""The generator interface: the factory, fingerprints, descriptions and CD generation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hypernet import generators
from hypernet.base_model import load_base_model
from hypernet.generators import (
    CDGenerator,
    GeneratedAdapter,
    Generator,
    GeneratorError,
    make_generator,
    register_generator,
)
from hypernet.tiny import make_tiny_model

DOC = (
    "The river town of Alder Bay was founded in 1821 by fishermen from the northern coast. "
    "Engineers built a new bridge across the river in 1998, and it is 240 metres long."
)


def test_cd_generator_produces_an_adapter_with_metrics(tiny_base) -> None:
    gen = make_generator("cd", tiny_base, {"steps": 10, "lr": 1e-2})
    assert isinstance(gen, CDGenerator) and isinstance(gen, Generator) and gen.name == "cd"
    calls: list[int] = []
    out = gen.generate(DOC, progress=lambda step, loss: calls.append(step))
    assert isinstance(out, GeneratedAdapter) and out.seconds > 0
    assert calls == list(range(1, 11))
    assert out.metrics["kl_end"] < out.metrics["kl_start"]
    assert out.metrics["probes"] == 2.0 and out.metrics["steps"] == 10.0
    assert all(isinstance(v, float) for v in out.metrics.values())
    assert out.weights.rank == 8 and out.weights.target_names == ["down_proj"]


def test_fingerprint_is_stable_for_equal_inputs_and_tracks_the_config(tiny_base) -> None:
    a = make_generator("cd", tiny_base, {"steps": 10})
    assert a.fingerprint() == make_generator("cd", tiny_base, {"steps": 10}).fingerprint()
    assert a.fingerprint() != make_generator("cd", tiny_base, {"steps": 11}).fingerprint()
    assert a.fingerprint() != make_generator("cd", tiny_base, {"steps": 10, "top_k": 8}).fingerprint()
    assert len(a.fingerprint()) == 64 and int(a.fingerprint(), 16) >= 0


def test_fingerprint_tracks_the_base_model_weights(tiny_base, tmp_path: Path) -> None:
    other = load_base_model(str(make_tiny_model(tmp_path / "m", seed=1)), tmp_path, device="cpu")
    assert other.weights_sha256 != tiny_base.weights_sha256
    assert make_generator("cd", other, {}).fingerprint() != make_generator("cd", tiny_base, {}).fingerprint()


def test_describe_gives_the_catalog_row(tiny_base) -> None:
    gen = make_generator("cd", tiny_base, {"steps": 7})
    info = gen.describe()
    assert info["kind"] == "cd" and info["config"]["steps"] == 7 and info["config"]["rank"] == 8
    assert info["base_model_id"] == tiny_base.model_id
    assert info["base_model_sha256"] == tiny_base.weights_sha256
    assert info["checkpoint_sha256"] is None and info["fingerprint"] == gen.fingerprint()


def test_hypernet_generators_need_a_checkpoint(tiny_base) -> None:
    for name in ("hypernet", "hypernet+cd"):
        with pytest.raises(GeneratorError, match=re.escape(f"generator '{name}' needs a trained checkpoint")):
            make_generator(name, tiny_base, {})


def test_unknown_generator_and_unknown_option_are_named(tiny_base) -> None:
    with pytest.raises(GeneratorError, match="unknown generator 'magic'"):
        make_generator("magic", tiny_base, {})
    with pytest.raises(GeneratorError, match="unknown option.*'stepz'"):
        make_generator("cd", tiny_base, {"stepz": 3})
    with pytest.raises(GeneratorError, match="invalid value for rank"):
        make_generator("cd", tiny_base, {"rank": 0})


def test_registered_builder_replaces_the_placeholder(tiny_base, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generators, "_BUILDERS", dict(generators._BUILDERS))
    register_generator("hypernet", lambda base, options: CDGenerator(base, generators.CDConfig(**options)))
    assert make_generator("hypernet", tiny_base, {"steps": 2}).name == "cd"
