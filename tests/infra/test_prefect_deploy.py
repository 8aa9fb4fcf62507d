"""`prefect deploy` of infra/prefect.yaml against the process stack's real Prefect server (PostgreSQL).

Deploys every deployment whose flow file exists in this checkout: ``--all`` once they all do (the
``generate-adapters`` flow, flows/generate_adapters.py, comes with the distributed refresh)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.fixtures.stack import ProcessStack, prefect_api, stack_environ, wait_flow_run
from tests.infra.stack_module import REPO

PREFECT_YAML = REPO / "infra" / "prefect.yaml"


def _deployments() -> list[dict]:
    return yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))["deployments"]


def _flow_name(entrypoint: str) -> str:
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(REPO / entrypoint)).name


def test_prefect_deploy_registers_the_infra_deployments(
    process_stack: ProcessStack, tmp_path: Path, tiny_model_dir: Path
) -> None:
    present = [d for d in _deployments() if (REPO / d["entrypoint"].split(":")[0]).is_file()]
    assert {d["entrypoint"] for d in present} >= {"flows/refresh.py:refresh", "flows/train.py:train_hypernet"}
    names = {f"{_flow_name(d['entrypoint'])}/{d['name']}": d for d in present}
    select = ["--all"] if len(present) == len(_deployments()) else [a for n in names for a in ("--name", n)]
    config = _empty_kb(tmp_path, tiny_model_dir)
    env = stack_environ(process_stack) | {"INSTILL_ROOT": str(REPO), "INSTILL_CONFIG": str(config)}
    argv = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(PREFECT_YAML)]
    done = subprocess.run([*argv, *select], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    for name, spec in names.items():
        deployment = prefect_api(process_stack, "GET", f"/deployments/name/{name}")
        assert deployment["work_pool_name"] == spec["work_pool"]["name"], name
        assert deployment["entrypoint"] == spec["entrypoint"]
        (step,) = deployment["pull_steps"]
        assert step["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
        assert deployment["job_variables"]["env"]["HF_HUB_OFFLINE"] == "1"
        if "config" in deployment["parameters"]:
            assert deployment["parameters"]["config"] == str(config)
    weekly = prefect_api(process_stack, "GET", "/deployments/name/refresh/weekly")
    (schedule,) = weekly["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 * * 1" and schedule["schedule"]["timezone"] == "Europe/Berlin"
    train = prefect_api(process_stack, "GET", "/deployments/name/train-hypernet/gpu")
    assert train["work_pool_name"] == "gpu"

    # The cpu worker runs the weekly deployment from the checkout, with the stack's catalog and registry.
    run = prefect_api(process_stack, "POST", f"/deployments/{weekly['id']}/create_flow_run", {})
    state = wait_flow_run(process_stack, run["id"], timeout_s=600)
    assert state["type"] == "COMPLETED", state
    detail = prefect_api(process_stack, "GET", f"/flow_runs/{run['id']}")
    assert detail["work_pool_name"] == "cpu" and detail["parameters"] == {"config": str(config)}


def _empty_kb(tmp_path: Path, model: Path) -> Path:
    (tmp_path / "docs").mkdir()
    config = tmp_path / "instill.yaml"
    body = {"name": f"deploykb{tmp_path.name[-6:].replace('_', '')}",
            "sources": [{"kind": "local", "name": "docs", "path": "docs"}],
            "generator": {"name": "cd", "base_model": str(model), "options": {"steps": 1}}}  # fmt: skip
    config.write_text(yaml.safe_dump(body))
    return config
