"""Distributed execution with real processes: a Prefect server on PostgreSQL, the catalog on PostgreSQL,
the `generate-adapters` deployment and two `prefect worker start --pool gpu --type process` workers.

A refresh configured for the pool ends in the same catalog and registry as the embedded refresh of the
same documents; a worker killed (-9, with the flow run it executes) in the middle of a batch leaves a
crashed run whose work the next refresh finishes, nothing lost or doubled; two refreshes at once do the
work once, the lock shown in Prefect as a global concurrency limit.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.fixtures.kb import DOCS
from tests.flows.reliability import REPO, check_invariants, env_for, make_kb, run, start, summary

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

EXECUTION = {"pool": "gpu", "batch_size": 2, "poll_s": 0.5}


KEYS = ("INSTILL_S3_ACCESS_KEY_ID", "INSTILL_S3_SECRET_ACCESS_KEY")


def _setup(folder: Path, model: Path, catalog: str, pool, workers: int, s3, **kb) -> tuple[Path, dict]:
    """A knowledge base on the PostgreSQL catalog ``catalog`` and an S3 store (a bucket of its own on the
    session's S3 server), its workers started (with their own homes); (config, env)."""
    from tasks.catalog.db import upgrade

    bucket = f"pool-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    store = {"kind": "s3", "bucket": bucket, "prefix": "store", "endpoint_url": s3.endpoint_url}
    store |= {"access_key_id_env": KEYS[0], "secret_access_key_env": KEYS[1]}
    config = make_kb(folder, model, store=store, **kb)
    upgrade(catalog)
    keys = dict(zip(KEYS, (s3.access_key_id, s3.secret_access_key), strict=True))
    pool_ = pool(INSTILL_HOME=str(folder / "worker-home"), INSTILL_CATALOG_URL=catalog, **keys)
    pool_.start(workers)
    env = env_for(folder, INSTILL_CATALOG_URL=catalog, **_prefect(pool_.server), **keys)
    return config, env | {"_pool": pool_, "_s3": s3, "_bucket": bucket}


def _prefect(server) -> dict[str, str]:
    return {"PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(server.home)}


def _env(env: dict) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("_")}


def _keys(env: dict) -> dict[str, str]:
    """The S3 store's key variables (what this process needs to open the knowledge base's store)."""
    return {k: env[k] for k in KEYS}


def test_a_pool_refresh_ends_as_the_embedded_refresh(
    pool, postgres_databases, s3_server, tmp_path, tiny_model_dir
):
    catalog = postgres_databases()
    config, env = _setup(tmp_path / "pool", tiny_model_dir, catalog, pool, 2, s3_server, execution=EXECUTION)
    code, out = run(config, "--json", str(tmp_path / "pool.json"), env=_env(env))
    assert code == 0, out
    result = summary(tmp_path / "pool.json")
    assert result["generated"] == 3 and len(result["registered"]) == 3, out

    plain = make_kb(tmp_path / "embedded", tiny_model_dir)
    code, out = run(plain, env=env_for(tmp_path / "embedded", **_prefect(env["_pool"].server)))
    assert code == 0, out

    check_invariants(config, tmp_path / "pool" / ".instill", catalog, _keys(env))
    distributed = _snapshot(config, tmp_path / "pool" / ".instill", catalog, _keys(env))
    embedded = _snapshot(plain, tmp_path / "embedded" / ".instill", None, {})
    assert distributed == embedded
    assert _runs_of(env["_pool"].server, "generate-adapters", "COMPLETED") >= 2, "two batches of two"
    _load_with_peft(config, tmp_path / "pool" / ".instill", catalog, env, tmp_path / "fetched")


def test_a_worker_killed_mid_batch_is_finished_by_the_next_refresh(
    pool, postgres_databases, s3_server, tmp_path, tiny_model_dir
):
    catalog = postgres_databases()
    folder = tmp_path / "kb"
    (folder / "docs").mkdir(parents=True)
    (folder / "docs" / "delta.txt").write_text("Delta ferries leave the north pier at dawn and at dusk.\n")
    slow = {"name": "cd", "base_model": str(tiny_model_dir), "options": {"steps": 300}}
    execution = EXECUTION | {"batch_size": 4}
    config, env = _setup(
        folder, tiny_model_dir, catalog, pool, 2, s3_server, execution=execution, generator=slow
    )
    refresh = start(config, "--json", str(tmp_path / "first.json"), env=_env(env))
    try:
        run_id, pid = _wait_for_a_recorded_adapter(env["_pool"].server, catalog)
        env["_pool"].kill_running(pid)
        out, _ = refresh.communicate(timeout=300)
    finally:
        refresh.kill()
    assert refresh.returncode == 1, out
    first = summary(tmp_path / "first.json")
    assert any("CRASHED" in f["reason"] for f in first["failed"]), first["failed"]
    assert _state_of(env["_pool"].server, run_id) == "CRASHED"

    code, out = run(config, "--json", str(tmp_path / "second.json"), env=_env(env))
    assert code == 0, out
    second = summary(tmp_path / "second.json")
    assert second["generated"] + first["generated"] == 4, (first, second)
    check_invariants(config, folder / ".instill", catalog, _keys(env))


def test_two_pool_refreshes_at_once_do_the_work_once(
    pool, postgres_databases, s3_server, tmp_path, tiny_model_dir
):
    from prefect.client.orchestration import get_client

    from tasks.lock import refresh_limit_name

    catalog = postgres_databases()
    config, env = _setup(tmp_path, tiny_model_dir, catalog, pool, 2, s3_server, execution=EXECUTION)
    env = _env(env) | {"INSTILL_LOCK_WAIT_S": "600"}
    procs = [start(config, "--json", str(tmp_path / f"s{i}.json"), env=env) for i in range(2)]
    try:
        held = _watch_limit(refresh_limit_name("testkb"), procs, env["PREFECT_API_URL"])
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    changed = sorted(sum(summary(tmp_path / f"s{i}.json")["changed"].values()) for i in range(2))
    assert changed == [0, 3], outs
    assert held == 1, "the refresh held the knowledge base's Prefect concurrency slot"
    with _client(env["PREFECT_API_URL"]), get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(refresh_limit_name("testkb")).active_slots == 0
    check_invariants(config, tmp_path / ".instill", catalog, _keys(env))


# ------------------------------------------------------------------------------------------- helpers


class _client:
    """Point this process's Prefect client at ``url`` for a moment."""

    def __init__(self, url: str) -> None:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        self._cm = temporary_settings({PREFECT_API_URL: url})

    def __enter__(self):
        return self._cm.__enter__()

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def _watch_limit(name: str, procs: list[subprocess.Popen], url: str) -> int:
    """The most slots of limit ``name`` seen held while ``procs`` run."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    most = 0
    with _client(url), get_client(sync_client=True) as client:
        while any(p.poll() is None for p in procs):
            with contextlib.suppress(ObjectNotFound):
                most = max(most, client.read_global_concurrency_limit_by_name(name).active_slots)
            time.sleep(0.5)
    return most


def _flow_runs(server, flow: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with _client(server.api_url), get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])), limit=200)


def _runs_of(server, flow: str, state: str) -> int:
    return sum(1 for r in _flow_runs(server, flow) if r.state and r.state.type.value == state)


def _state_of(server, run_id) -> str:
    from prefect.client.orchestration import get_client

    with _client(server.api_url), get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state.type.value


def _wait_for_a_recorded_adapter(server, catalog: str, timeout: float = 240):
    """Once a worker has recorded its batch's first adapter: (its flow run id, the run's process id)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(catalog)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                made = conn.execute(text("SELECT flow_run_id FROM adapters")).scalars().all()
            if made:
                running = [r for r in _flow_runs(server, "generate-adapters") if str(r.id) in made]
                if running and running[0].infrastructure_pid:
                    return running[0].id, int(running[0].infrastructure_pid.rsplit(":", 1)[-1])
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise AssertionError("no worker recorded an adapter in time")


def _snapshot(config: Path, home: Path, catalog: str | None, keys: dict[str, str]) -> dict:
    """Catalog and registry, without what differs between any two runs (ids of runs, times, the
    adapter folder's sha256, which holds its creation time)."""
    from sqlalchemy import select

    from tasks.catalog.db import session_scope
    from tasks.catalog.models import AliasEvent, Document
    from tasks.registry import SHA_TAG
    from tasks.release import latest_release
    from tasks.runtime import forget_runtimes, runtime

    saved = {k: os.environ.get(k) for k in ("INSTILL_HOME", "INSTILL_CATALOG_URL", *keys)}
    os.environ["INSTILL_HOME"] = str(home)
    os.environ.update(keys)
    os.environ.pop("INSTILL_CATALOG_URL", None)
    if catalog:
        os.environ["INSTILL_CATALOG_URL"] = catalog
    forget_runtimes()
    try:
        rt = runtime(config)
        out: dict = {"documents": {}, "registry": {}, "events": []}
        with session_scope(rt.sessions) as s:
            for doc in s.scalars(select(Document)):
                out["documents"][doc.label] = [
                    (v.seq, v.text_sha256, v.change_kind, [(a.state.value, a.rank, a.registered_model,
                     a.model_version, a.covered_fraction) for a in v.adapters])
                    for v in doc.versions
                ]  # fmt: skip
            events = s.scalars(select(AliasEvent))
            out["events"] = sorted(
                (e.registered_model, e.alias, e.from_version, e.to_version, e.reason) for e in events
            )
        client = rt.registry.client
        for model in client.search_registered_models():
            versions = client.search_model_versions(f"name = '{model.name}'")
            tags = sorted(
                (v.version, v.tags.get("qa_verdict"), v.tags.get("text_sha256"), bool(v.tags.get(SHA_TAG)))
                for v in versions
            )
            out["registry"][model.name] = (tags, sorted(model.aliases.items()))
        version, manifest = latest_release(rt)
        out["release"] = (
            version,
            [{k: d[k] for k in ("document", "model", "version")} for d in manifest["documents"]],
        )
        return out
    finally:
        forget_runtimes()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


LOAD_BY_URI = """
import sys
from peft import PeftModel
from transformers import AutoModelForCausalLM
from tasks.store_s3 import fetch_folder

folder = fetch_folder(sys.argv[1], sys.argv[2])
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[3]), folder)
print("loaded", sum(1 for name, _ in model.named_parameters() if "lora_A" in name))
"""


def _load_with_peft(config: Path, home: Path, catalog: str, env: dict, target: Path) -> None:
    """Every production adapter is in S3 and loads with PEFT in a fresh process that knows only its
    ``s3://`` URI (and boto3's usual variables)."""
    import sys

    from sqlalchemy import select

    from tasks.catalog.db import session_scope
    from tasks.catalog.models import Adapter
    from tasks.catalog.types import AdapterState
    from tasks.runtime import forget_runtimes, runtime

    keys = _keys(env)
    saved = {k: os.environ.get(k) for k in ("INSTILL_HOME", "INSTILL_CATALOG_URL", *keys)}
    os.environ.update(keys | {"INSTILL_HOME": str(home), "INSTILL_CATALOG_URL": catalog})
    forget_runtimes()
    try:
        rt = runtime(config)
        with session_scope(rt.sessions) as s:
            live = s.scalars(select(Adapter).where(Adapter.state == AdapterState.PRODUCTION))
            located = [rt.store.locate(a.store_uri) for a in live]
        model_dir = rt.kb.generator.base_model
    finally:
        forget_runtimes()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    assert len(located) == len(DOCS) and all(
        uri.startswith(f"s3://{env['_bucket']}/store/") for uri in located
    )
    s3 = env["_s3"]
    fresh = {k: v for k, v in os.environ.items() if not k.startswith(("INSTILL_", "MLFLOW_", "PREFECT_API"))}
    fresh |= {"AWS_ENDPOINT_URL_S3": s3.endpoint_url, "AWS_ACCESS_KEY_ID": s3.access_key_id,
              "AWS_SECRET_ACCESS_KEY": s3.secret_access_key, "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    for i, uri in enumerate(located):
        argv = [sys.executable, "-c", LOAD_BY_URI, uri, str(target / str(i)), model_dir]
        proc = subprocess.run(argv, cwd=REPO, env=fresh, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "loaded" in proc.stdout, proc.stderr[-2000:]
