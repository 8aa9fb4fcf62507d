"""infra/pools/*.json: base job templates that Prefect accepts for their worker type and that render the
GPU settings (Prefect's own validation: the work-pool schema, the variables' JSON schema, and each worker
type's job configuration built from the template the way a worker builds it)."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml
from prefect.utilities.schema_tools.validation import ValidationError

from tests.infra.stack_module import REPO

POOLS = REPO / "infra" / "pools"


def _template(kind: str) -> dict:
    return json.loads((POOLS / f"{kind}.json").read_text(encoding="utf-8"))


def _worker(kind: str):
    if kind == "process":
        from prefect.workers.process import ProcessWorker

        return ProcessWorker
    if kind == "docker":
        from prefect_docker.worker import DockerWorker

        return DockerWorker
    from prefect_kubernetes.worker import KubernetesWorker

    return KubernetesWorker


def _render(kind: str, values: dict | None = None):
    """The job configuration a worker of this type builds from the template and job variables."""
    template = _template(kind)
    worker = _worker(kind)
    return asyncio.run(worker.job_configuration.from_template_and_values(template, values or {}))


def _deployment_job_variables() -> list[dict]:
    prefect_yaml = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text(encoding="utf-8"))
    return [d["work_pool"].get("job_variables", {}) for d in prefect_yaml["deployments"]]


@pytest.mark.parametrize("kind", ["process", "docker", "kubernetes"])
def test_template_is_a_valid_work_pool_template_for_its_worker_type(kind) -> None:
    from prefect.server.schemas.actions import DeploymentCreate, WorkPoolCreate

    template = _template(kind)
    pool = WorkPoolCreate(name=f"gpu-{kind}", type=kind, base_job_template=template)
    assert pool.base_job_template == template
    default = _worker(kind).get_default_base_job_template()
    assert set(default["variables"]["properties"]) <= set(template["variables"]["properties"])
    for job_variables in _deployment_job_variables():  # what infra/prefect.yaml sets per deployment
        DeploymentCreate(name="d", flow_id="00000000-0000-0000-0000-000000000000",
                         job_variables=job_variables).check_valid_configuration(template)  # fmt: skip
    config = _render(kind, {"env": {"EXTRA": "1"}})
    assert config.env["EXTRA"] == "1"


def test_an_undeclared_template_variable_is_refused() -> None:
    from prefect.server.schemas.actions import WorkPoolCreate

    template = _template("kubernetes")
    template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["runtimeClassName"] = "{{ rc }}"
    with pytest.raises(ValueError, match="undeclared variable"):
        WorkPoolCreate(name="gpu", type="kubernetes", base_job_template=template)


def test_process_template_keeps_flow_runs_offline() -> None:
    config = _render("process")
    assert config.env["HF_HUB_OFFLINE"] == "1" and config.env["OMP_NUM_THREADS"] == "1"


def test_docker_template_requests_a_gpu_device() -> None:
    from docker.types import DeviceRequest

    config = _render("docker")
    (request,) = config.container_create_kwargs["device_requests"]
    device = DeviceRequest(**request)  # what docker-py sends to the engine
    assert (device.driver, device.count, device.capabilities) == ("nvidia", 1, [["gpu"]])
    assert config.image == "instill:latest"
    cpu_only = _render("docker", {"container_create_kwargs": {}})
    assert "device_requests" not in cpu_only.container_create_kwargs


def test_kubernetes_template_limits_gpus_selects_nodes_and_reads_secrets() -> None:
    config = _render("kubernetes", {"gpu_limit": 2, "secret_name": "team-instill"})
    pod = config.job_manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["image"] == "instill:latest"
    assert container["envFrom"] == [{"secretRef": {"name": "team-instill"}}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    default = _render("kubernetes").job_manifest["spec"]["template"]["spec"]["containers"][0]
    assert default["resources"]["limits"]["nvidia.com/gpu"] == 1

    from prefect.server.schemas.actions import DeploymentCreate

    wrong = DeploymentCreate(name="d", flow_id="00000000-0000-0000-0000-000000000000",
                             job_variables={"gpu_limit": "two"})  # fmt: skip
    with pytest.raises(ValidationError, match="'gpu_limit'. Failure reason: 'two' is not of type"):
        wrong.check_valid_configuration(_template("kubernetes"))
