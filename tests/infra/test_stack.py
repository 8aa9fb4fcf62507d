"""infra/stack.py: the stack comes up healthy, `up` again changes nothing, secrets stay in stack.env."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.fixtures.stack import SCRIPT, ProcessStack, kill_service


def _get(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _pids(stack: ProcessStack) -> dict[str, str]:
    return {p.stem: p.read_text() for p in stack.state_dir.glob("*.pid")}


def test_stack_is_up_and_up_again_keeps_every_process(process_stack: ProcessStack) -> None:
    before = _pids(process_stack)
    assert set(before) == {"s3", "prefect-server", "mlflow", "worker-gpu-1", "worker-gpu-2", "worker-cpu-1"}
    process_stack.run("up")
    assert _pids(process_stack) == before
    assert process_stack.run("status").returncode == 0
    assert _get(f"{process_stack.prefect_api}/health") is True
    with urllib.request.urlopen(f"{process_stack.mlflow_url}/health", timeout=10) as resp:
        assert resp.status == 200


def test_up_restarts_a_killed_worker_and_leaves_the_rest(process_stack: ProcessStack) -> None:
    before = _pids(process_stack)
    killed = kill_service(process_stack, "worker-gpu-2")
    done = process_stack.run("status", check=False)
    assert done.returncode == 1 and "worker-gpu-2     down" in done.stdout
    process_stack.run("up")
    after = _pids(process_stack)
    assert after["worker-gpu-2"] != str(killed)
    assert {k: v for k, v in after.items() if k != "worker-gpu-2"} == {
        k: v for k, v in before.items() if k != "worker-gpu-2"
    }
    assert process_stack.run("status").returncode == 0


def test_workers_poll_their_pools_with_the_infra_template(process_stack: ProcessStack) -> None:
    for pool, names in {"gpu": {"worker-gpu-1", "worker-gpu-2"}, "cpu": {"worker-cpu-1"}}.items():
        workers = _get(f"{process_stack.prefect_api}/work_pools/{pool}/workers/filter", {})
        assert {w["name"] for w in workers if w["status"] == "ONLINE"} == names
        detail = _get(f"{process_stack.prefect_api}/work_pools/{pool}")
        assert detail["type"] == "process"
        variables = detail["base_job_template"]["variables"]["properties"]
        assert variables["env"]["default"]["HF_HUB_OFFLINE"] == "1"


def test_prefect_and_mlflow_run_on_postgresql(process_stack: ProcessStack) -> None:
    options = json.loads((process_stack.state_dir / "stack.json").read_text())
    prefix = options["db_prefix"]
    import psycopg

    tables = {}
    for name in ("prefect", "mlflow", "instill_catalog"):
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{prefix}{name}", connect_timeout=5) as db:
            tables[name] = {r[0] for r in db.execute("SELECT tablename FROM pg_tables")}
    assert "flow_run" in tables["prefect"]
    assert "registered_models" in tables["mlflow"]
    assert "documents" in tables["instill_catalog"]


def test_secrets_only_in_the_env_file(process_stack: ProcessStack) -> None:
    env_file = process_stack.state_dir / "stack.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    secret = process_stack.env["INSTILL_S3_SECRET_ACCESS_KEY"]
    others = [p for p in process_stack.state_dir.iterdir() if p.is_file() and p != env_file]
    assert others and all(secret not in p.read_text(errors="replace") for p in others)
    assert process_stack.store["secret_access_key_env"] == "INSTILL_S3_SECRET_ACCESS_KEY"


def test_status_of_a_stack_that_is_not_up(tmp_path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "status", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert "prefect-server   down" in done.stdout


def test_kill_and_down_reach_processes_in_sessions_of_their_own(tmp_path) -> None:
    """A process worker starts each flow run in a session of its own: `kill` (a node failure) and `down`
    must still end it. Here a stand-in service starts such a child; both must be gone."""
    child_pid = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
        "start_new_session=True); "
        f"open({str(child_pid)!r}, 'w').write(str(c.pid)); time.sleep(600)"
    )
    for command in ("kill", "down"):
        service = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        (tmp_path / "worker-gpu-1.pid").write_text(str(service.pid))
        while not child_pid.exists() or not child_pid.read_text():
            time.sleep(0.05)
        child = int(child_pid.read_text())
        argv = [sys.executable, str(SCRIPT), command, "--state-dir", str(tmp_path), "--gpu-workers", "1"]
        if command == "kill":
            argv.insert(3, "worker-gpu-1")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert service.wait(timeout=30) is not None
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{child}").exists(), f"{command} left the flow-run stand-in running"
        child_pid.unlink()


def test_up_sizes_the_gpu_limit_to_the_gpu_workers_and_adds_the_crash_automation(
    process_stack: ProcessStack,
) -> None:
    limit = _get(f"{process_stack.prefect_api}/v2/concurrency_limits/gpu")
    assert limit["limit"] == 2  # the fixture's two gpu workers
    automations = _get(f"{process_stack.prefect_api}/automations/filter", {})
    assert any(a["name"].startswith("instill: crash generate-adapters") for a in automations)
