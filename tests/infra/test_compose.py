"""infra/compose.yaml: valid against the Compose specification's JSON schema, and the same topology as
infra/stack.py (no container engine runs here, so the file is checked, not started)."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

import pytest
import yaml
from jsonschema import validators

from tests.infra.stack_module import REPO, load_stack

COMPOSE = REPO / "infra" / "compose.yaml"


def _schema() -> dict:
    # The compose-spec schema as vendored (with its Apache-2.0 licence) by check-jsonschema.
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))


def _errors(doc: dict) -> list[str]:
    schema = _schema()
    validator = validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def test_compose_file_follows_the_compose_specification(compose) -> None:
    assert _errors(compose) == []
    broken = copy.deepcopy(compose)
    broken["services"]["mlflow"]["restart_policy"] = "always"  # not a service key
    broken["services"]["worker-gpu-1"]["deploy"]["resources"]["reservations"] = ["nvidia"]
    problems = _errors(broken)
    assert any("restart_policy" in p for p in problems)
    assert any(p.startswith("services/worker-gpu-1/deploy") for p in problems)


def test_compose_runs_the_stack_scripts_services_with_the_same_commands(compose, tmp_path) -> None:
    stack = load_stack()
    opts = stack.Options(state_dir=str(tmp_path))
    env = {name: "x" for name in stack.KEY_ENV}
    specs = {name: argv for name, argv, _ in stack.service_specs(opts, env)}
    services = compose["services"]
    assert set(services) - {"postgres", "setup"} == set(specs)
    for name, argv in specs.items():
        if name == "s3":  # moto here, SeaweedFS there: same port
            assert "9000:9000" in services[name]["ports"][0] and str(opts.s3_port) == "9000"
            continue
        ours = [Path(argv[0]).name, *argv[1:]]
        theirs = list(services[name]["command"])
        if name == "mlflow":  # inside a network: the backend's host is `postgres`, Host headers allowed
            theirs = theirs[: theirs.index("--allowed-hosts")]
            ours[ours.index("--backend-store-uri") + 1] = (
                "postgresql+psycopg://postgres@127.0.0.1:5432/mlflow"
            )
            theirs[theirs.index("--backend-store-uri") + 1] = ours[ours.index("--backend-store-uri") + 1]
        assert _same_but_host(ours, theirs), f"{name}: {ours} != {theirs}"
    assert services["setup"]["command"] == ["python", "infra/stack.py", "setup"]


def _same_but_host(ours: list[str], theirs: list[str]) -> bool:
    if "--host" in ours:
        ours, theirs = list(ours), list(theirs)
        ours[ours.index("--host") + 1] = theirs[theirs.index("--host") + 1] = "HOST"
    return ours == theirs


def test_gpu_workers_reserve_a_device_and_cpu_workers_do_not(compose) -> None:
    for name, service in compose["services"].items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if name.startswith("worker-gpu"):
            assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
        else:
            assert devices == [], name


def test_every_instill_service_gets_the_stack_env_names_and_no_secret(compose, tmp_path) -> None:
    stack = load_stack()
    names = set(stack.stack_env(stack.Options(state_dir=str(tmp_path))))
    for name in ("prefect-server", "mlflow", "setup", "worker-gpu-1", "worker-cpu-1"):
        assert names <= set(compose["services"][name]["environment"]), name
    lines = [line.strip() for line in COMPOSE.read_text(encoding="utf-8").splitlines()]
    for secret in ("INSTILL_S3_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD", "PGPASSWORD"):
        values = {line.split(":", 1)[1].strip() for line in lines if line.startswith(secret)}
        assert values and all(v.startswith("${") for v in values), secret
    sql = (REPO / "infra" / "postgres-init.sql").read_text()
    assert all(f"CREATE DATABASE {db};" in sql for db in ("instill_catalog", "prefect", "mlflow"))
