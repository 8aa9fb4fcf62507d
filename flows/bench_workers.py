"""`instill bench-workers`: documents per hour, embedded against one and two workers of a process pool.

A fixed set of documents (``--docs`` seeded paragraphs, the same on every run) is refreshed from scratch
three times, each in a fresh home, with the generator of ``--config``'s knowledge base (``--steps``
overrides a `cd` generator's steps; gates as configured): in the refreshing process (embedded), then on a
work pool with one worker, then with two (one torch thread each). The Prefect server is a private
`prefect server start` (SQLite) on a free port; workers start before the clock and stay up, as on a
real pool, and both pool modes use the same batches (``--batch-size``, default half the documents), so
the only difference is how many run at once. Reported: documents per hour of each mode (the wall clock
of `instill refresh`, its start-up included), two workers over one (target >= 1.7x), and per batch the
overhead of the distributed path: waiting for a worker (scheduling and the flow run's process start),
loading the base model and generator, and the time around the generator (store and catalog writes).
With ``--s3`` every mode stores its adapters on a private S3 server (moto, on loopback; a fresh prefix
per mode), so that time includes the S3 round trips of a real pool. The machine's load average is
recorded beside the figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml

from flows.console import ConfigOption, console, out

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "bench-gpu"
DEPLOYMENT = "generate-adapters/bench"
TARGET_SPEEDUP = 1.7
WORDS = ["station", "harbour", "engineer", "ferry", "archive", "valve", "orchard", "beacon"]
FIRST, LAST = ["Mara", "Oren", "Ilse", "Tomas", "Ada"], ["Quill", "Daltry", "Brand"]
S3_BUCKET = "instill-bench"
# moto accepts any key pair; the store reads them from these variables, as it would real ones
S3_KEY_ENV = ("BENCH_S3_KEY_ID", "BENCH_S3_SECRET")


def documents(n: int) -> dict[str, str]:
    """``n`` fixed documents of about 120 words of made-up facts (seeded: the same on every run)."""
    rng = random.Random(7)
    docs = {}
    for i in range(n):
        facts = [
            f"The {rng.choice(WORDS)} of site {i} was built in {rng.randint(1900, 2020)} by "
            f"{rng.choice(FIRST)} {rng.choice(LAST)}."
            for _ in range(10)
        ]
        docs[f"doc-{i:03d}.txt"] = " ".join(facts) + "\n"
    return docs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path, api_url: str, prefect_home: Path, model_cache: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("INSTILL_", "PREFECT_", "MLFLOW_TRACKING"))
    }
    return env | {
        "INSTILL_HOME": str(home),
        "INSTILL_MODEL_CACHE": str(model_cache),
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        S3_KEY_ENV[0]: "bench",
        S3_KEY_ENV[1]: "bench-secret",
    }


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Wait until ``url`` answers 200; a server that exits or stays silent is named with its log."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up (see {log})")
        time.sleep(0.3)


@contextlib.contextmanager
def _s3(folder: Path):
    """A private S3 server (moto) with the bench's bucket; yields its endpoint URL."""
    import boto3

    folder.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{_free_port()}"
    cmd = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", url.rsplit(":", 1)[1]]
    log = (folder / "s3.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(f"{url}/moto-api/", proc, folder / "s3.log", 60)
        client = boto3.client(
            "s3", endpoint_url=url, region_name="us-east-1",
            aws_access_key_id="bench", aws_secret_access_key="bench-secret",
        )  # fmt: skip
        client.create_bucket(Bucket=S3_BUCKET)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def s3_store(url: str, prefix: str) -> dict:
    """The ``store:`` section for the bench's S3 server under ``prefix`` (key variable names only)."""
    return {
        "kind": "s3", "bucket": S3_BUCKET, "prefix": prefix, "endpoint_url": url, "region": "us-east-1",
        "access_key_id_env": S3_KEY_ENV[0], "secret_access_key_env": S3_KEY_ENV[1],
    }  # fmt: skip


@contextlib.contextmanager
def _server(folder: Path):
    """A private Prefect server with the worker deployment on pool ``bench-gpu``; yields its API URL."""
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = _env(folder, url, folder / "prefect", folder) | {"PREFECT_UI_ENABLED": "false"}
    log = (folder / "server.log").open("wb")
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(f"{url}/health", proc, folder / "server.log", 300)
        spec = {
            "name": "instill-bench",
            "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}],
            "deployments": [
                {
                    "name": DEPLOYMENT.split("/")[1],
                    "entrypoint": "flows/generate_adapters.py:generate_adapters",
                    "work_pool": {"name": POOL},
                }
            ],
        }
        (folder / "prefect.yaml").write_text(yaml.safe_dump(spec))
        prefect = str(BIN / "prefect")
        _run([prefect, "work-pool", "create", POOL, "--type", "process"], env)
        _run([prefect, "--no-prompt", "deploy", "--prefect-file", str(folder / "prefect.yaml"), "--all"], env)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _run(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {(proc.stdout + proc.stderr)[-1500:]}")
    return proc.stdout


def _knowledge_base(folder: Path, base: dict, docs: dict[str, str], execution: dict | None) -> Path:
    (folder / "docs").mkdir(parents=True)
    for name, text in docs.items():
        (folder / "docs" / name).write_text(text, encoding="utf-8")
    body = base | {"name": "benchkb", "sources": [{"kind": "local", "name": "docs", "path": "docs"}]}
    if execution:
        body["execution"] = execution
    config = folder / "instill.yaml"
    config.write_text(yaml.safe_dump(body))
    return config


def _workers(n: int, env: dict[str, str], folder: Path) -> list[subprocess.Popen]:
    cmd = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--limit", "1"]
    procs = []
    for i in range(n):
        log = (folder / f"worker-{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
    _wait_for_workers(n, env["PREFECT_API_URL"])
    return procs


def _wait_for_workers(n: int, url: str, timeout: float = 300) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            online = [w for w in client.read_workers_for_work_pool(POOL) if w.status.value == "ONLINE"]
            if len(online) >= n:
                return
            time.sleep(1)
    raise RuntimeError(f"{n} worker(s) did not come online")


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _batches(url: str, since: float) -> list[dict]:
    """Per flow run of the worker deployment created after ``since``: its timing and its report."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.dispatch import run_report, run_timing

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["generate-adapters"])), limit=200
        )
    return [run_timing(r) | run_report(r) for r in runs if r.created and r.created.timestamp() >= since]


def _mode(
    name: str, folder: Path, base: dict, docs: dict, url: str, cache: Path, workers: int, batch: int
) -> dict:
    """One refresh of the documents from scratch: embedded (``workers`` 0) or on ``workers`` workers."""
    execution = (
        {"pool": POOL, "deployment": DEPLOYMENT, "batch_size": batch, "poll_s": 0.5} if workers else None
    )
    config = _knowledge_base(folder, base, docs, execution)
    env = _env(folder / "home", url, folder / "prefect", cache)
    procs = _workers(workers, env, folder) if workers else []
    try:
        if workers:
            _run(
                [
                    sys.executable,
                    "-c",
                    "from flows.cli import app; app()",
                    "pool-setup",
                    "--gpu-slots",
                    str(workers),
                ],
                env,
            )
        since = time.time()
        start = time.perf_counter()
        cmd = [sys.executable, "-c", "from flows.cli import app; app()", "refresh", "--config", str(config)]
        _run([*cmd, "--json", str(folder / "summary.json")], env)
        seconds = time.perf_counter() - start
    finally:
        _stop(procs)
    generated = json.loads((folder / "summary.json").read_text())["generated"]
    if generated != len(docs):
        raise RuntimeError(f"{name}: {generated} of {len(docs)} documents generated (see {folder})")
    row = {
        "mode": name,
        "workers": workers,
        "seconds": round(seconds, 1),
        "docs_per_hour": round(3600 * len(docs) / seconds, 1),
    }
    console.print(f"{name}: {len(docs)} documents in {seconds:.1f} s")
    return row | ({"batches": _batches(url, since)} if workers else {})


def _overhead(batches: list[dict]) -> dict:
    """Median per-batch overhead of the distributed path, in seconds."""
    import statistics

    def median(key) -> float | None:
        values = [v for v in (key(b) for b in batches) if v is not None]
        return round(statistics.median(values), 2) if values else None

    return {
        "waited_for_a_worker_s": median(lambda b: b.get("waited_s")),
        "load_model_s": median(lambda b: b.get("seconds", {}).get("load")),
        "store_and_catalog_s": median(
            lambda b: b["seconds"]["generate"] - b["seconds"]["generator"] if "seconds" in b else None
        ),
        "run_minus_work_s": median(
            lambda b: (
                b["ran_s"] - b["seconds"]["generate"] - b["seconds"]["gate"]
                if b.get("ran_s") and "seconds" in b
                else None
            )
        ),
    }


def bench_workers(
    config: ConfigOption = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the figures here.")] = None,
    docs: Annotated[int, typer.Option(min=2, help="Documents in the fixed set.")] = 8,
    steps: Annotated[int | None, typer.Option(help="Override a cd generator's steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default: half the documents).")] = None,
    s3: Annotated[bool, typer.Option("--s3", help="Store adapters on a private S3 server (moto).")] = False,
) -> None:
    """Documents per hour: embedded, one worker, two workers (a private Prefect server, process pool)."""
    from flows.console import settings_for
    from tasks.settings import load_knowledge_base

    settings = settings_for(config)
    kb = load_knowledge_base(settings.config)
    base = {"generator": kb.generator.model_dump(mode="json"), "gates": kb.gates.model_dump(mode="json")}
    if steps is not None:
        base["generator"]["options"] = base["generator"]["options"] | {"steps": steps}
    fixed = documents(docs)
    batch = batch_size or max(1, docs // 2)
    load = os.getloadavg()
    work = settings.home.resolve() / "bench-workers"  # logs and homes of the last run, kept
    shutil.rmtree(work, ignore_errors=True)
    with _server(work / "server") as url, _s3(work / "s3") if s3 else contextlib.nullcontext() as s3_url:
        rows = []
        for name, workers in (("embedded", 0), ("one worker", 1), ("two workers", 2)):
            folder = work / name.replace(" ", "-")
            kb_base = base | ({"store": s3_store(s3_url, folder.name)} if s3 else {})
            rows.append(_mode(name, folder, kb_base, fixed, url, settings.models_dir, workers, batch))
    speedup = rows[2]["docs_per_hour"] / rows[1]["docs_per_hour"]
    figures = {
        "documents": docs,
        "batch_size": batch,
        "store": "s3 (moto on loopback)" if s3 else "local",
        "generator": base["generator"],
        "rows": rows,
        "two_over_one": round(speedup, 2),
        "target": TARGET_SPEEDUP,
        "overhead_per_batch": _overhead([b for r in rows for b in r.get("batches", [])]),
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    lines = ["| mode | seconds | documents per hour |", "|---|---|---|"]
    lines += [f"| {r['mode']} | {r['seconds']} | {r['docs_per_hour']} |" for r in rows]
    lines += ["", f"two workers / one worker: {speedup:.2f}x (target >= {TARGET_SPEEDUP}x)"]
    lines += [f"per batch (median): {figures['overhead_per_batch']}"]
    lines += [f"load average before {figures['load_average_before']}, after {figures['load_average_after']}"]
    out.print("\n".join(lines), markup=False, highlight=False)
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
