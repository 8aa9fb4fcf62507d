"""`prefect deploy` of infra/prefect.yaml against the process stack's real Prefect server (PostgreSQL).

Deploys every deployment whose flow file exists in this checkout: ``--all`` once they all do (the
``generate-adapters`` flow, flows/generate_adapters.py, comes with the distributed refresh)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from tests.fixtures.stack import ProcessStack, stack_environ
from tests.infra.stack_module import REPO

PREFECT_YAML = REPO / "infra" / "prefect.yaml"


def _deployments() -> list[dict]:
    return yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))["deployments"]


def _flow_name(entrypoint: str) -> str:
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(REPO / entrypoint)).name


def _get(stack: ProcessStack, path: str) -> dict:
    with urllib.request.urlopen(f"{stack.prefect_api}{path}", timeout=30) as resp:
        return json.loads(resp.read())


def test_prefect_deploy_registers_the_infra_deployments(process_stack: ProcessStack, tmp_path: Path) -> None:
    present = [d for d in _deployments() if (REPO / d["entrypoint"].split(":")[0]).is_file()]
    assert {d["entrypoint"] for d in present} >= {"flows/refresh.py:refresh", "flows/train.py:train_hypernet"}
    names = {f"{_flow_name(d['entrypoint'])}/{d['name']}": d for d in present}
    select = ["--all"] if len(present) == len(_deployments()) else [a for n in names for a in ("--name", n)]
    config = tmp_path / "instill.yaml"
    env = stack_environ(process_stack) | {"INSTILL_ROOT": str(REPO), "INSTILL_CONFIG": str(config)}
    argv = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(PREFECT_YAML)]
    done = subprocess.run([*argv, *select], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    for name, spec in names.items():
        deployment = _get(process_stack, f"/deployments/name/{name}")
        assert deployment["work_pool_name"] == spec["work_pool"]["name"], name
        assert deployment["entrypoint"] == spec["entrypoint"]
        (step,) = deployment["pull_steps"]
        assert step["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
        assert deployment["job_variables"]["env"]["HF_HUB_OFFLINE"] == "1"
        if "config" in deployment["parameters"]:
            assert deployment["parameters"]["config"] == str(config)
    weekly = _get(process_stack, "/deployments/name/refresh/weekly")
    (schedule,) = weekly["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 * * 1" and schedule["schedule"]["timezone"] == "Europe/Berlin"
    assert _get(process_stack, "/deployments/name/train-hypernet/gpu")["work_pool_name"] == "gpu"
