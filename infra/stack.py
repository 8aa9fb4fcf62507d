"""The production topology as local processes (no Docker): ``python infra/stack.py up|down|status``.

``up`` (idempotent: a service already running and healthy is left alone) brings up, in order:

* the databases ``<prefix>instill_catalog``, ``<prefix>prefect`` and ``<prefix>mlflow`` on the PostgreSQL
  server at ``--postgres`` (created if missing; the catalog is migrated to the latest revision);
* an S3 server (moto) with the bucket ``--bucket``;
* ``prefect server start`` on its PostgreSQL database (asyncpg driver);
* ``mlflow server`` with its PostgreSQL backend store and ``--artifacts-destination s3://<bucket>/mlflow``
  (proxied artifacts: clients never need the S3 keys to log or download a model version);
* the work pools ``cpu`` and ``gpu`` (type ``process``, base job template ``infra/pools/process.json``)
  and ``--cpu-workers`` / ``--gpu-workers`` ``prefect worker start --type process`` workers.

Pid files and logs go to ``--state-dir`` (default ``.instill/stack``), with ``stack.json`` (ports and
options, no secrets), ``stack.env`` (mode 0600: the variables that point instill at the stack, S3 keys
included) and ``instill-store.yaml`` (the ``store:`` section for instill.yaml: names of the key variables,
never the keys). ``down`` stops everything (``--drop-databases`` also drops the three databases);
``status`` prints one line per service and exits 1 unless all are up; ``kill NAME`` SIGKILLs a service and
the processes it started (a node failure; ``up`` restarts it); ``setup`` only migrates the catalog,
creates the bucket and the pools for services started elsewhere (infra/compose.yaml, the same topology as
containers, runs it), reading where they are from the environment (the variables of ``stack.env``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOLS = {"cpu": REPO / "infra" / "pools" / "process.json", "gpu": REPO / "infra" / "pools" / "process.json"}
REGION = "us-east-1"
KEY_ENV = ("INSTILL_S3_ACCESS_KEY_ID", "INSTILL_S3_SECRET_ACCESS_KEY")  # names the store config refers to
# Every process of the stack runs offline, telemetry-free and on one thread per worker process.
QUIET = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",  # logs complete up to the moment a service dies
}


class StackError(RuntimeError):
    """A service did not come up, or the state folder disagrees with the options; one line."""


@dataclass
class Options:
    state_dir: str
    postgres: str = "postgresql://postgres@127.0.0.1:5432"
    db_prefix: str = ""
    prefect_port: int = 4200
    mlflow_port: int = 5000
    s3_port: int = 9000
    bucket: str = "instill"
    gpu_workers: int = 2
    cpu_workers: int = 1

    @property
    def state(self) -> Path:
        return Path(self.state_dir).resolve()

    def db_url(self, name: str, driver: str) -> str:
        scheme, rest = self.postgres.split("://", 1)
        return f"{scheme}+{driver}://{rest.rstrip('/')}/{self.db_prefix}{name}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def workers(self) -> list[tuple[str, str]]:
        """(service name, pool) of every worker."""
        gpu = [(f"worker-gpu-{i}", "gpu") for i in range(1, self.gpu_workers + 1)]
        return gpu + [(f"worker-cpu-{i}", "cpu") for i in range(1, self.cpu_workers + 1)]


# --- the services -------------------------------------------------------------------------------------


def service_specs(opts: Options, env: dict[str, str]) -> list[tuple[str, list[str], dict[str, str]]]:
    """(name, argv, environment) of every long-running process, in start order."""
    prefect_env = env | {
        "PREFECT_API_DATABASE_CONNECTION_URL": opts.db_url("prefect", "asyncpg"),
        "PREFECT_HOME": str(opts.state / "prefect-server"),
    }
    mlflow_env = env | {
        "MLFLOW_S3_ENDPOINT_URL": opts.s3_url,
        "AWS_ACCESS_KEY_ID": env[KEY_ENV[0]],
        "AWS_SECRET_ACCESS_KEY": env[KEY_ENV[1]],
        "AWS_DEFAULT_REGION": REGION,
    }
    specs = [
        ("s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(opts.s3_port)], env),
        ("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                            "--port", str(opts.prefect_port), "--no-background"], prefect_env),
        ("mlflow", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(opts.mlflow_port),
                    "--workers", "1", "--backend-store-uri", opts.db_url("mlflow", "psycopg"),
                    "--serve-artifacts", "--artifacts-destination", f"s3://{opts.bucket}/mlflow"],
         mlflow_env),
    ]  # fmt: skip
    for name, pool in opts.workers():
        argv = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                "--name", name, "--limit", "1", "--no-create-pool-if-not-found"]  # fmt: skip
        # Each worker has a home of its own (its store cache, fingerprint cache), as on its own machine;
        # the base models come from the checkout's model cache unless INSTILL_MODEL_CACHE says otherwise.
        home = {
            "PREFECT_HOME": str(opts.state / "prefect-client"),
            "INSTILL_HOME": str(opts.state / name),
            "INSTILL_MODEL_CACHE": env.get("INSTILL_MODEL_CACHE", str(REPO / ".instill" / "models")),
        }
        specs.append((name, argv, env | home))
    return specs


def stack_env(opts: Options) -> dict[str, str]:
    """What a process needs to use the stack: instill's settings, Prefect's and MLflow's, the S3 keys."""
    keys = _keys(opts)
    return {
        "PREFECT_API_URL": opts.prefect_api,
        "MLFLOW_TRACKING_URI": opts.mlflow_url,
        "INSTILL_CATALOG_URL": opts.db_url("instill_catalog", "psycopg"),
        KEY_ENV[0]: keys[0],
        KEY_ENV[1]: keys[1],
        # boto3's default client (a process that only knows an s3:// URI) finds the stack's S3 with these.
        "AWS_ENDPOINT_URL_S3": opts.s3_url,
        "AWS_ACCESS_KEY_ID": keys[0],
        "AWS_SECRET_ACCESS_KEY": keys[1],
        "AWS_DEFAULT_REGION": REGION,
    }


def store_section(opts: Options) -> dict:
    """The ``store:`` section of instill.yaml for this stack (key variable names only)."""
    return {
        "store": {
            "kind": "s3",
            "bucket": opts.bucket,
            "prefix": "store",
            "endpoint_url": opts.s3_url,
            "region": REGION,
            "access_key_id_env": KEY_ENV[0],
            "secret_access_key_env": KEY_ENV[1],
        }
    }


def _keys(opts: Options) -> tuple[str, str]:
    """The S3 key pair of this stack: made once, kept in ``stack.env`` (0600) only."""
    env_file = opts.state / "stack.env"
    if env_file.is_file():
        found = dict(line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines())
        if KEY_ENV[0] in found:
            return found[KEY_ENV[0]], found[KEY_ENV[1]]
    return f"instill{secrets.token_hex(6)}", secrets.token_hex(20)


# --- up -----------------------------------------------------------------------------------------------


def up(opts: Options) -> None:
    opts.state.mkdir(parents=True, exist_ok=True)
    (opts.state / "logs").mkdir(exist_ok=True)
    _check_same_options(opts)
    env = os.environ | QUIET | stack_env(opts)
    _write_outputs(opts, env)
    create_databases(opts)
    specs = {name: (argv, e) for name, argv, e in service_specs(opts, env)}
    _ensure("s3", specs, opts, lambda _: _http_ok(f"{opts.s3_url}/moto-api/"))
    _ensure("prefect-server", specs, opts, lambda _: _http_ok(f"{opts.prefect_api}/health"), wait_s=240)
    _ensure("mlflow", specs, opts, lambda _: _http_ok(f"{opts.mlflow_url}/health"), wait_s=240)
    setup(env, opts.bucket, opts.gpu_workers)
    for name, pool in opts.workers():
        _ensure(name, specs, opts, lambda started, n=name, p=pool: _worker_online(opts, p, n, started), 180)
    print(f"stack up: Prefect {opts.prefect_api}, MLflow {opts.mlflow_url}, S3 {opts.s3_url}")
    print(f"environment: source {opts.state / 'stack.env'}")
    print(f"store config for instill.yaml: {opts.state / 'instill-store.yaml'}")


def _check_same_options(opts: Options) -> None:
    saved = opts.state / "stack.json"
    if saved.is_file() and any(_alive(opts, name) for name in _names(opts)):
        before = json.loads(saved.read_text())
        if before != asdict(opts):
            raise StackError(f"a stack with other options is running from {opts.state}: run `down` first")
    saved.write_text(json.dumps(asdict(opts), indent=2) + "\n")


def _write_outputs(opts: Options, env: dict[str, str]) -> None:
    import yaml

    env_file = opts.state / "stack.env"
    lines = [f"export {key}={env[key]}" for key in stack_env(opts)]
    env_file.touch(mode=0o600)
    env_file.chmod(0o600)
    env_file.write_text("\n".join(lines) + "\n")
    (opts.state / "instill-store.yaml").write_text(yaml.safe_dump(store_section(opts), sort_keys=False))


def create_databases(opts: Options) -> None:
    import psycopg
    from psycopg import sql

    try:
        admin = psycopg.connect(f"{opts.postgres.rstrip('/')}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise StackError(f"PostgreSQL at {opts.postgres} is not reachable: {str(exc).strip()}") from None
    with admin:
        for name in ("instill_catalog", "prefect", "mlflow"):
            db = f"{opts.db_prefix}{name}"
            if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))


def setup(env: dict[str, str], bucket: str, gpu_slots: int) -> None:
    """What the services need before workers start, given the variables of ``stack.env``: the catalog
    migrated, the bucket, the ``cpu`` and ``gpu`` pools with their base job template, and `instill
    pool-setup` (the ``gpu`` concurrency limit, one slot per gpu worker, and the automation that crashes a
    worker flow run whose heartbeats stopped; the workers keep Prefect's default heartbeat, 180 s).
    (infra/compose.yaml runs it as ``infra/stack.py setup``.)"""
    code = "import sys; from tasks.catalog.db import upgrade; upgrade(sys.argv[1])"
    _run([sys.executable, "-c", code, env["INSTILL_CATALOG_URL"]], "catalog migration")
    create_bucket(env, bucket)
    for pool, template in POOLS.items():
        put_work_pool(env["PREFECT_API_URL"], pool, json.loads(template.read_text()))
    pool_setup = [str(BIN / "instill"), "pool-setup", "--gpu-slots", str(gpu_slots), "--heartbeat-s", "180"]
    _run(pool_setup, "instill pool-setup", env)


def create_bucket(env: dict[str, str], bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name=REGION,
                      aws_access_key_id=env[KEY_ENV[0]], aws_secret_access_key=env[KEY_ENV[1]])  # fmt: skip
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)


def put_work_pool(api: str, name: str, template: dict) -> None:
    """Create the pool with this base job template, or set the template of the existing pool."""
    body = {"name": name, "type": "process", "base_job_template": template}
    try:
        _api(api, "POST", "/work_pools/", body)
    except urllib.error.HTTPError as exc:
        if exc.code != 409:
            detail = exc.read()[:300].decode(errors="replace")
            raise StackError(f"cannot create work pool {name}: HTTP {exc.code} {detail}") from None
        _api(api, "PATCH", f"/work_pools/{name}", {"base_job_template": template})


def _worker_online(opts: Options, pool: str, name: str, started: float | None) -> bool:
    """The worker is ONLINE; one just started must have sent a heartbeat since (the record of a killed
    predecessor of the same name stays ONLINE for a while)."""
    from datetime import datetime

    try:
        workers = _api(opts.prefect_api, "POST", f"/work_pools/{pool}/workers/filter", {})
    except (urllib.error.URLError, OSError):
        return False
    for w in workers:
        if w["name"] == name and w.get("status") == "ONLINE":
            beat = datetime.fromisoformat(w["last_heartbeat_time"].replace("Z", "+00:00")).timestamp()
            return started is None or beat >= started - 1
    return False


def _ensure(name: str, specs: dict, opts: Options, healthy, wait_s: float = 60) -> None:
    """Start ``name`` unless it is running; then wait until ``healthy(started)`` (the start's epoch
    seconds, None when it was running already)."""
    argv, env = specs[name]
    proc = started = None
    if not _alive(opts, name):
        started = time.time()
        log = (opts.state / "logs" / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        _pid_file(opts, name).write_text(str(proc.pid))
    deadline = time.monotonic() + wait_s
    while not healthy(started):
        if (proc.poll() is not None) if proc else not _alive(opts, name):
            log = opts.state / "logs" / f"{name}.log"
            code = f" with status {proc.returncode}" if proc else ""
            raise StackError(f"{name} exited{code}; see {log}:\n{_tail(opts, name)}")
        if time.monotonic() > deadline:
            raise StackError(f"{name} not healthy after {wait_s:.0f} s; see {opts.state / 'logs'}")
        time.sleep(0.5)


# --- down and status ----------------------------------------------------------------------------------


def down(opts: Options, drop_databases: bool = False) -> None:
    """Stop every service (workers first) with what it started (a worker's flow runs run in sessions of
    their own): SIGTERM, SIGKILL after 20 s; optionally drop the databases."""
    for name in reversed(_names(opts)):
        pid = _pid(opts, name)
        if pid is not None and _alive(opts, name):
            tree = _tree(pid)
            _signal_groups(tree, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while any(_runs(p) for p in tree) and time.monotonic() < deadline:
                time.sleep(0.2)
            _signal_groups(tree, signal.SIGKILL)
        _pid_file(opts, name).unlink(missing_ok=True)
    if drop_databases:
        _drop_databases(opts)
    print(f"stack down ({opts.state})")


def kill(opts: Options, name: str) -> None:
    """SIGKILL one service and every process it started, as when its machine dies (``up`` restarts it)."""
    pid = _pid(opts, name)
    if pid is None or not _alive(opts, name):
        raise StackError(f"{name} is not running")
    _signal_groups(_tree(pid), signal.SIGKILL)


def status(opts: Options) -> bool:
    """One line per service; True when every service runs."""
    every = True
    for name in _names(opts):
        alive = _alive(opts, name)
        every &= alive
        print(f"{name:16} {'up' if alive else 'down':5} pid {_pid(opts, name) or '-'}")
    return every


def _drop_databases(opts: Options) -> None:
    import psycopg
    from psycopg import sql

    admin_url = f"{opts.postgres.rstrip('/')}/postgres"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        for name in ("instill_catalog", "prefect", "mlflow"):
            ident = sql.Identifier(f"{opts.db_prefix}{name}")
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


# --- helpers ------------------------------------------------------------------------------------------


def _names(opts: Options) -> list[str]:
    return ["s3", "prefect-server", "mlflow"] + [name for name, _ in opts.workers()]


def _pid_file(opts: Options, name: str) -> Path:
    return opts.state / f"{name}.pid"


def _pid(opts: Options, name: str) -> int | None:
    try:
        return int(_pid_file(opts, name).read_text())
    except (OSError, ValueError):
        return None


def _alive(opts: Options, name: str) -> bool:
    """The recorded process runs (a zombie or a recycled pid of another program does not count)."""
    pid = _pid(opts, name)
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and str(BIN).encode() in cmdline


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def _runs(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal_groups(pids: list[int], sig: int) -> None:
    """Signal the process group of each of ``pids`` (a service's, and each flow run's own session)."""
    groups = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, sig)


def _tail(opts: Options, name: str, chars: int = 2000) -> str:
    try:
        return (opts.state / "logs" / f"{name}.log").read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except (TimeoutError, urllib.error.URLError, OSError):
        return False


def _api(api: str, method: str, path: str, body: dict):
    req = urllib.request.Request(f"{api}{path}", data=json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=(env or os.environ) | QUIET)
    if done.returncode:
        raise StackError(f"{what} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def parse(argv: list[str]) -> tuple[str, Options, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="infra/stack.py", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["up", "down", "status", "setup", "kill"])
    p.add_argument("service", nargs="?", help="kill: the service (e.g. worker-gpu-1)")
    defaults = Options(state_dir=".instill/stack")
    for field, value in asdict(defaults).items():
        p.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=None)
    p.add_argument("--drop-databases", action="store_true", help="down: also drop the three databases")
    args = p.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k in asdict(defaults) and v is not None}
    saved = Path(given.get("state_dir", defaults.state_dir)) / "stack.json"
    base = json.loads(saved.read_text()) if saved.is_file() else asdict(defaults)
    return args.command, Options(**(base | given)), args


def main(argv: list[str] | None = None) -> int:
    command, opts, args = parse(sys.argv[1:] if argv is None else argv)
    try:
        if command == "up":
            up(opts)
        elif command == "setup":  # services started elsewhere (compose): the environment says where
            setup(dict(os.environ), opts.bucket, opts.gpu_workers)
        elif command == "kill":
            kill(opts, args.service or "")
        elif command == "down":
            down(opts, args.drop_databases)
        else:
            return 0 if status(opts) else 1
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
