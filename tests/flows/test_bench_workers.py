"""`instill bench-workers`' pieces that run without a pool: the fixed documents and the private S3 store."""

from __future__ import annotations

from pydantic import TypeAdapter

from flows.bench_workers import S3_KEY_ENV, _s3, documents, s3_store
from tasks.runtime import open_store
from tasks.settings import Settings, StoreConfig


def test_the_fixed_documents_are_the_same_on_every_run_and_differ_from_each_other():
    first, again = documents(6), documents(6)
    assert first == again
    assert len(set(first.values())) == 6
    assert all(80 <= len(text.split()) <= 160 for text in first.values())


def test_the_bench_s3_server_holds_what_a_mode_stores_under_its_own_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv(S3_KEY_ENV[0], "bench")
    monkeypatch.setenv(S3_KEY_ENV[1], "bench-secret")
    settings = Settings(home=tmp_path / "home")
    with _s3(tmp_path / "s3") as url:
        cfg = TypeAdapter(StoreConfig).validate_python(s3_store(url, "one-worker"))
        store = open_store(settings, cfg)
        stored = store.put_bytes(b"adapter bytes", "adapters")
        assert store.get_bytes(stored.uri) == b"adapter bytes"
        other = open_store(settings, TypeAdapter(StoreConfig).validate_python(s3_store(url, "two-workers")))
        assert not other.exists(stored.uri)  # each mode starts from an empty prefix
