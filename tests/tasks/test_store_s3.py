"""The S3 artifact store against a real S3 server on loopback (moto, IAM authentication on)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.errors import StoreUnavailable
from tasks.runtime import open_store
from tasks.settings import S3StoreConfig, Settings
from tasks.store import StoreError, sha256_bytes
from tasks.store_s3 import MANIFEST, S3Store, fetch_folder

KEY_ENV = ("TEST_STORE_KEY_ID", "TEST_STORE_SECRET")


def _config(bucket: str, endpoint_url: str, prefix: str = "") -> S3StoreConfig:
    return S3StoreConfig(
        kind="s3",
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint_url,
        access_key_id_env=KEY_ENV[0],
        secret_access_key_env=KEY_ENV[1],
        retries=0,
    )


@pytest.fixture
def bucket(make_bucket):
    return make_bucket(versioned=True)  # every write shows as a version: "no second write" is checkable


@pytest.fixture
def store(bucket, s3_server, tmp_path, monkeypatch) -> S3Store:
    monkeypatch.setenv(KEY_ENV[0], s3_server.access_key_id)
    monkeypatch.setenv(KEY_ENV[1], s3_server.secret_access_key)
    cfg = _config(bucket.name, s3_server.endpoint_url, prefix="team/store")
    return open_store(Settings(home=tmp_path / "home"), cfg)


def _folder(root: Path) -> Path:
    folder = root / "adapter"
    (folder / "sub").mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 40)
    (folder / "sub" / "notes.txt").write_text("nested")
    return folder


def _versions(bucket, prefix: str = "") -> dict[str, int]:
    found: dict[str, int] = {}
    for v in bucket.client.list_object_versions(Bucket=bucket.name, Prefix=prefix).get("Versions", []):
        found[v["Key"]] = found.get(v["Key"], 0) + 1
    return found


def test_s3_store_provides_the_artifact_store_interface(store) -> None:
    from tasks.store import ArtifactStore

    interface = {name for name in vars(ArtifactStore) if not name.startswith("_")}
    assert all(callable(getattr(store, name)) for name in interface)
    assert store.root.is_dir()


def test_blob_round_trip_under_the_prefix(store, bucket) -> None:
    stored = store.put_bytes(b"the text of a document", "text")
    assert stored.sha256 == sha256_bytes(b"the text of a document")
    assert store.get_bytes(stored.uri) == b"the text of a document"
    assert store.exists(stored.uri)
    key = f"team/store/text/{stored.sha256[:2]}/{stored.sha256[2:]}"
    assert store.locate(stored.uri) == f"s3://{bucket.name}/{key}"
    assert list(_versions(bucket)) == [key]


def test_folder_round_trip_and_fetch_by_s3_uri(store, bucket, tmp_path, s3_server) -> None:
    folder = _folder(tmp_path)
    uri = store.put_dir(folder, "adapters", "d" * 64)
    local = store.get_dir(uri)
    assert local != folder and local.is_relative_to(store.root)
    for rel in ("adapter_config.json", "adapter_model.safetensors", "sub/notes.txt"):
        assert (local / rel).read_bytes() == (folder / rel).read_bytes()
    assert not (local / MANIFEST).exists()
    fetched = fetch_folder(store.locate(uri), tmp_path / "fetched", client=s3_server.client())
    assert (fetched / "sub" / "notes.txt").read_text() == "nested"


def test_second_put_writes_nothing(store, bucket, tmp_path) -> None:
    folder = _folder(tmp_path)
    first = store.put_bytes(b"same bytes", "raw")
    uri = store.put_dir(folder, "adapters", "e" * 64)
    before = _versions(bucket)
    assert store.put_bytes(b"same bytes", "raw") == first
    assert store.put_dir(folder, "adapters", "e" * 64) == uri
    (folder / "adapter_config.json").write_text("changed")  # a stored folder is never written again
    assert store.put_dir(folder, "adapters", "e" * 64) == uri
    assert _versions(bucket) == before and set(before.values()) == {1}
    assert (store.get_dir(uri) / "adapter_config.json").read_text() == '{"r": 4}'


def test_tampered_objects_are_detected_on_read(store, bucket, tmp_path) -> None:
    stored = store.put_bytes(b"original", "text")
    bucket.put(store.locate(stored.uri).split("/", 3)[3], b"tampered")
    with pytest.raises(StoreError, match="does not match its sha256"):
        store.get_bytes(stored.uri)
    uri = store.put_dir(_folder(tmp_path), "adapters", "f" * 64)
    weights = store.locate(uri).split("/", 3)[3] + "/adapter_model.safetensors"
    bucket.put(weights, b"not the weights")
    with pytest.raises(StoreError, match="adapter_model.safetensors does not match its manifest"):
        store.get_dir(uri)


def test_a_tampered_cached_copy_is_downloaded_again(store, tmp_path) -> None:
    uri = store.put_dir(_folder(tmp_path), "adapters", "a" * 64)
    local = store.get_dir(uri)
    (local / "adapter_config.json").write_text("edited by hand")
    assert (store.get_dir(uri) / "adapter_config.json").read_text() == '{"r": 4}'


def test_a_folder_without_manifest_does_not_exist_and_is_completed(store, bucket, tmp_path) -> None:
    folder = _folder(tmp_path)
    uri = "store://adapters/" + "b" * 64
    key = store.locate(uri).split("/", 3)[3]
    bucket.put(f"{key}/adapter_config.json", b"half of a crashed upload")
    assert not store.exists(uri)
    with pytest.raises(StoreError, match="not in the store"):
        store.get_dir(uri)
    assert store.put_dir(folder, "adapters", "b" * 64) == uri
    body = bucket.client.get_object(Bucket=bucket.name, Key=f"{key}/{MANIFEST}")["Body"].read()
    manifest = json.loads(body)
    assert set(manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors", "sub/notes.txt"}
    assert (store.get_dir(uri) / "adapter_config.json").read_text() == '{"r": 4}'


def test_missing_blob_and_bad_uris(store) -> None:
    with pytest.raises(StoreError, match="not in the store at s3://"):
        store.get_bytes("store://text/ab/" + "c" * 62)
    with pytest.raises(StoreError, match="malformed"):
        store.get_bytes("store://text/../../etc")


def test_wrong_key_is_one_line_without_the_secret(bucket, s3_server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV[0], s3_server.access_key_id)
    monkeypatch.setenv(KEY_ENV[1], "not-the-secret-at-all")
    cfg = _config(bucket.name, s3_server.endpoint_url)
    store = open_store(Settings(home=tmp_path / "home"), cfg)
    with pytest.raises(StoreUnavailable) as err:
        store.put_bytes(b"x", "raw")
    message = str(err.value)
    assert "\n" not in message and "not-the-secret-at-all" not in message
    assert message.startswith(f"artifact store s3://{bucket.name} at {s3_server.endpoint_url}")


def test_unset_key_variable_is_named(bucket, s3_server, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(KEY_ENV[0], raising=False)
    cfg = _config(bucket.name, s3_server.endpoint_url)
    with pytest.raises(StoreUnavailable, match=f"environment variable {KEY_ENV[0]} is not set"):
        open_store(Settings(home=tmp_path / "home"), cfg)
