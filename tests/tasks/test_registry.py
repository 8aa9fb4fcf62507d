"""The MLflow registry wrapper against a real sqlite-backed MLflow store."""

from pathlib import Path

import pytest

from tasks.registry import AdapterRecord, Registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    root = tmp_path_factory.mktemp("mlflow")
    return Registry(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", "test-kb")


def _adapter_dir(tmp_path: Path, payload: bytes) -> Path:
    folder = tmp_path / payload.hex()[:8]
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(payload)
    (folder / "adapter_config.json").write_text("{}")
    return folder


def test_register_is_idempotent_by_adapter_sha(registry, tmp_path):
    folder = _adapter_dir(tmp_path, b"weights-one")
    record = AdapterRecord("kb-docs-1", folder, "a" * 64, tags={"path": "a.md"}, params={"gen": "cd"})
    first = registry.register(record)
    again = registry.register(record)
    assert first.version == "1" and not first.reused
    assert again.version == first.version and again.reused
    other = registry.register(AdapterRecord("kb-docs-1", _adapter_dir(tmp_path, b"two"), "b" * 64))
    assert other.version == "2"


def test_registered_artifacts_are_the_adapter_files(registry, tmp_path):
    folder = _adapter_dir(tmp_path, b"payload-x")
    version = registry.register(AdapterRecord("kb-docs-2", folder, "c" * 64))
    files = {f.path for f in registry.client.list_artifacts(version.run_id, "adapter")}
    assert files == {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"}


def test_alias_moves_report_the_previous_version(registry, tmp_path):
    registry.register(AdapterRecord("kb-docs-3", _adapter_dir(tmp_path, b"v1"), "d" * 64))
    registry.register(AdapterRecord("kb-docs-3", _adapter_dir(tmp_path, b"v2"), "e" * 64))
    assert registry.set_alias("kb-docs-3", "production", "1") is None
    assert registry.set_alias("kb-docs-3", "production", "2") == "1"
    assert registry.alias("kb-docs-3", "production") == "2"
    assert registry.delete_alias("kb-docs-3", "production") == "2"
    assert registry.alias("kb-docs-3", "production") is None
    assert registry.delete_alias("kb-docs-3", "production") is None
