"""Shared by the reliability tests: a knowledge base in a folder, `instill` as a real process, invariants."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml
from sqlalchemy import select

from tests.fixtures.kb import DOCS

REPO = Path(__file__).resolve().parents[2]


def make_kb(folder: Path, model_dir: Path, **extra) -> Path:
    """A three-document local knowledge base with its home inside ``folder``; returns instill.yaml."""
    docs = folder / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    config = folder / "instill.yaml"
    body = {
        "name": "testkb",
        "sources": [{"kind": "local", "name": "docs", "path": "docs"}],
        "generator": {"name": "cd", "base_model": str(model_dir), "options": {"steps": 2}},
        "promotion": {"auto_promote": True},
        "gates": {"enabled": False},
    } | extra
    config.write_text(yaml.safe_dump(body))
    return config


def env_for(folder: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INSTILL_", "MLFLOW_TRACKING"))}
    env |= {"INSTILL_HOME": str(folder / ".instill"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    try:  # the session's Prefect test server, when a test started it: no server start per process
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():
            env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    except Exception:  # noqa: BLE001
        pass
    return env | extra


def start(config: Path, *args: str, env: dict[str, str], command: str = "refresh") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from flows.cli import app; app()", command, "--config", str(config), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run(config: Path, *args: str, env: dict[str, str], timeout: float = 300, command: str = "refresh"):
    proc = start(config, *args, env=env, command=command)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def check_invariants(
    config: Path, home: Path, catalog_url: str | None = None, extra_env: dict[str, str] | None = None
) -> None:
    """Nothing lost, nothing doubled: the checks the crash and concurrency tests share (``extra_env``:
    variables the knowledge base needs, such as its S3 store's keys)."""
    from tasks.runtime import forget_runtimes

    extra_env = extra_env or {}
    saved = {k: os.environ.get(k) for k in ("INSTILL_HOME", "INSTILL_CATALOG_URL", *extra_env)}
    os.environ["INSTILL_HOME"] = str(home)
    os.environ.update(extra_env)
    if catalog_url:
        os.environ["INSTILL_CATALOG_URL"] = catalog_url
    try:
        _check(config)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        forget_runtimes()


def _check(config: Path) -> None:
    from tasks.aliases import CANDIDATE, PRODUCTION
    from tasks.catalog.db import session_scope
    from tasks.catalog.models import Adapter, Document, DocumentVersion, RefreshRun
    from tasks.catalog.types import AdapterState, DocumentState, RunStatus
    from tasks.registry import SHA_TAG
    from tasks.runtime import forget_runtimes, runtime

    forget_runtimes()
    rt = runtime(config)
    registry = rt.registry
    with session_scope(rt.sessions) as s:
        assert not s.scalars(select(RefreshRun).where(RefreshRun.status == RunStatus.RUNNING)).all()
        versions = s.scalars(select(DocumentVersion)).all()
        keys = Counter((v.document_id, v.source_revision, v.path) for v in versions)
        assert max(keys.values()) == 1, f"a change recorded twice: {keys}"
        live = Counter(
            (a.document_version_id, a.generator_id)
            for a in s.scalars(select(Adapter).where(Adapter.state != AdapterState.RETIRED))
        )
        assert not live or max(live.values()) == 1, f"an adapter doubled: {live}"
        known = {
            (a.registered_model, a.model_version): a.adapter_sha256
            for a in s.scalars(select(Adapter).where(Adapter.registered_model.is_not(None)))
        }
        docs = s.scalars(select(Document)).all()
        for doc in docs:
            model = f"testkb-{doc.source.name}-{doc.id}"
            if doc.state is DocumentState.DELETED:
                assert registry.alias(model, PRODUCTION) is None and registry.alias(model, CANDIDATE) is None
                continue
            latest = doc.versions[-1]
            prod = [a for v in doc.versions for a in v.adapters if a.state is AdapterState.PRODUCTION]
            assert len(prod) == 1, f"{doc.label}: {len(prod)} production adapters"
            assert prod[0].document_version.text_sha256 == latest.text_sha256, f"{doc.label}: stale adapter"
            assert registry.alias(model, PRODUCTION) == prod[0].model_version
        models = {f"testkb-{d.source.name}-{d.id}" for d in docs}
    for model in models:
        if not registry._model_exists(model):
            continue
        shas = []
        for mv in registry.client.search_model_versions(f"name = '{model}'"):
            assert (model, str(mv.version)) in known, f"orphan MLflow version {model} v{mv.version}"
            shas.append(mv.tags.get(SHA_TAG))
        assert len(shas) == len(set(shas)), f"{model}: duplicate versions per sha256 {shas}"
    exp = registry.client.get_experiment_by_name("testkb")
    if exp is not None:
        assert not registry.client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    from tasks.release import latest_release, production_manifest

    with session_scope(rt.sessions) as s:
        manifest = production_manifest(s, rt)
    latest = latest_release(rt)
    assert latest is not None and latest[1]["documents"] == manifest["documents"]
    with session_scope(rt.sessions) as s:
        CHECKED["states"] = {d.current_path: d.state for d in s.scalars(select(Document))}


CHECKED: dict = {}


def summary(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
