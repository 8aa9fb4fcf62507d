"""The content-addressed artifact store: blobs and folders written once, addressed by URI, read back."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tasks.store import (
    ArtifactStore,
    LocalStore,
    StoredObject,
    StoreError,
    blob_uri,
    sha256_bytes,
    sha256_file,
)

DATA = b"The blue bin takes paper, cardboard and clean food tins.\n"
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def _adapter_folder(path: Path, weights: bytes = b"\x00\x01weights") -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8}')
    (path / "adapter_model.safetensors").write_bytes(weights)
    (path / "sub" / "instill.json").write_text('{"document": "kb/a.md"}')
    return path


def _leftovers(root: Path) -> list[Path]:
    return list(root.rglob(".tmp-*"))


def test_put_bytes_stores_under_kind_and_split_sha256(store):
    obj = store.put_bytes(DATA, "text")
    assert obj == StoredObject(uri=f"store://text/{SHA[:2]}/{SHA[2:]}", sha256=SHA, size=len(DATA))
    assert (store.root / "text" / SHA[:2] / SHA[2:]).read_bytes() == DATA
    assert _leftovers(store.root) == []


def test_put_bytes_is_idempotent_and_does_not_rewrite(store):
    first = store.put_bytes(DATA, "text")
    path = store.root / "text" / SHA[:2] / SHA[2:]
    before = path.stat()
    second = store.put_bytes(DATA, "text")
    after = path.stat()
    assert second == first
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_same_bytes_under_another_kind_is_another_object(store):
    assert store.put_bytes(DATA, "raw").uri != store.put_bytes(DATA, "text").uri


def test_round_trip_through_a_moved_store(store, tmp_path):
    obj = store.put_bytes(DATA, "raw")
    assert store.get_bytes(obj.uri) == DATA
    assert store.exists(obj.uri)
    moved = LocalStore(Path(shutil.copytree(store.root, tmp_path / "elsewhere")))
    assert moved.get_bytes(obj.uri) == DATA


def test_empty_bytes_round_trip(store):
    obj = store.put_bytes(b"", "raw")
    assert obj.size == 0
    assert store.get_bytes(obj.uri) == b""


def test_flipped_byte_in_stored_file_is_detected(store):
    obj = store.put_bytes(DATA, "text")
    path = store.root / "text" / SHA[:2] / SHA[2:]
    corrupted = bytearray(path.read_bytes())
    corrupted[5] ^= 0x01
    path.write_bytes(bytes(corrupted))
    with pytest.raises(StoreError) as info:
        store.get_bytes(obj.uri)
    assert obj.uri in str(info.value)
    assert "does not match its sha256" in str(info.value)


def test_putting_the_bytes_again_repairs_a_corrupted_copy(store):
    obj = store.put_bytes(DATA, "text")
    (store.root / "text" / SHA[:2] / SHA[2:]).write_bytes(b"garbage")
    assert store.put_bytes(DATA, "text") == obj
    assert store.get_bytes(obj.uri) == DATA


def test_missing_object_raises_store_error_naming_the_uri(store):
    uri = blob_uri("text", "0" * 64)
    assert not store.exists(uri)
    with pytest.raises(StoreError, match=uri):
        store.get_bytes(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        "store://text/../../etc/passwd",
        "store://../" + "a" * 64,
        "store://text/ab/not-hex",
        "store://Text/ab/" + "c" * 62,
        "store://text",
    ],
)
def test_malformed_uris_are_rejected(store, uri):
    with pytest.raises(StoreError, match="URI"):
        store.exists(uri)


def test_bad_kind_is_rejected(store):
    with pytest.raises(StoreError, match="kind"):
        store.put_bytes(DATA, "../up")


def test_put_dir_copies_the_folder_and_round_trips(store, tmp_path):
    source = _adapter_folder(tmp_path / "adapter")
    uri = store.put_dir(source, "adapters", "d1g357")
    assert uri == "store://adapters/d1g357"
    stored = store.get_dir(uri)
    assert stored == store.root / "adapters" / "d1g357"
    assert sorted(p.relative_to(stored).as_posix() for p in stored.rglob("*")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "sub",
        "sub/instill.json",
    ]
    assert (stored / "adapter_model.safetensors").read_bytes() == b"\x00\x01weights"
    assert source.is_dir()  # copied, not moved
    assert store.exists(uri)
    assert _leftovers(store.root) == []


def test_put_dir_keeps_an_existing_folder(store, tmp_path):
    first = store.put_dir(_adapter_folder(tmp_path / "one", b"first"), "adapters", "same-digest")
    marker = (store.get_dir(first) / "adapter_model.safetensors").stat()
    second = store.put_dir(_adapter_folder(tmp_path / "two", b"second"), "adapters", "same-digest")
    assert second == first
    kept = store.get_dir(first) / "adapter_model.safetensors"
    assert kept.read_bytes() == b"first"
    assert kept.stat().st_mtime_ns == marker.st_mtime_ns


def test_put_dir_that_fails_midway_leaves_nothing_behind(store, tmp_path):
    source = _adapter_folder(tmp_path / "adapter")
    os.symlink(tmp_path / "does-not-exist", source / "zz-dangling")  # copytree fails on it
    with pytest.raises(OSError):
        store.put_dir(source, "adapters", "broken")
    assert not store.exists("store://adapters/broken")
    assert not (store.root / "adapters" / "broken").exists()
    assert _leftovers(store.root) == []


def test_put_dir_of_a_missing_folder_raises_store_error(store, tmp_path):
    with pytest.raises(StoreError, match="not a directory"):
        store.put_dir(tmp_path / "nope", "adapters", "abc123")


def test_blob_and_folder_uris_are_not_interchangeable(store, tmp_path):
    blob = store.put_bytes(DATA, "text").uri
    folder = store.put_dir(_adapter_folder(tmp_path / "a"), "adapters", "abc123")
    with pytest.raises(StoreError, match="is a folder"):
        store.get_bytes(folder)
    with pytest.raises(StoreError, match="is a blob"):
        store.get_dir(blob)


def test_sha256_helpers_agree_on_a_file_larger_than_one_chunk(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert sha256_file(path) == sha256_bytes(data) == hashlib.sha256(data).hexdigest()


def test_local_store_provides_the_artifact_store_interface(store):
    interface = {name for name in vars(ArtifactStore) if not name.startswith("_")}
    assert interface == {"put_bytes", "get_bytes", "put_dir", "get_dir", "exists", "locate"}
    assert all(callable(getattr(store, name)) for name in interface)
    assert store.root.is_dir()
