"""`instill pool-setup`: what a Prefect server needs before a refresh can generate on a GPU work pool.

Run once after `prefect deploy` (the stack script does): it sizes the ``gpu`` global concurrency limit to
the pool's devices (each `generate-adapters` flow run holds one slot while it uses a device, so workers
never oversubscribe one) and creates the automation that marks a `generate-adapters` flow run
``Crashed`` when its heartbeats stop (its worker died with it, e.g. ``kill -9`` or a lost node), so the
waiting refresh reports the batch and the next refresh generates it. ``--heartbeat-s`` must be the
workers' ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (Prefect's default, 180 s, unless the pool's job template
or the workers' environment sets it lower, at least 30 s): a run is crashed after two missed heartbeats,
so a value below the workers' would crash live runs. Idempotent: run it again to resize.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from flows.console import ConfigOption, out, settings_for

WORKER_FLOW = "generate-adapters"
AUTOMATION = "instill: crash generate-adapters runs without heartbeats"


def zombie_automation(heartbeat_s: int):
    """Prefect's documented zombie-run automation, narrowed to the worker flow's runs (a refresh's own
    run may heartbeat less often): no heartbeat and no end within two heartbeats -> Crashed."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    ends = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}
    return Automation(
        name=AUTOMATION,
        description=f"A {WORKER_FLOW} flow run whose heartbeats stopped lost its worker.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *ends},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification(
                {"prefect.resource.role": "flow", "prefect.resource.name": WORKER_FLOW}
            ),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=2 * heartbeat_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {2 * heartbeat_s} s: its worker died; the next refresh redoes it",
            )
        ],
    )


def setup_pool(gpu_slots: int, heartbeat_s: int) -> None:
    from prefect.client.orchestration import get_client

    from tasks.lock import GPU_LIMIT

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, gpu_slots)
        for old in client.read_automations_by_name(AUTOMATION):
            client.delete_automation(old.id)
    zombie_automation(heartbeat_s).create()


def pool_setup(
    gpu_slots: Annotated[int, typer.Option(min=1, help="Devices on the pool: slots of the `gpu` limit.")],
    heartbeat_s: Annotated[
        int, typer.Option(min=30, help="The workers' PREFECT_FLOWS_HEARTBEAT_FREQUENCY (Prefect: 180 s).")
    ] = 180,
    config: ConfigOption = None,
) -> None:
    """Size the `gpu` concurrency limit and mark runs whose worker died as crashed (PREFECT_API_URL)."""
    from tasks.dispatch import require_server

    settings_for(config)  # offline, telemetry off, logging as every command; the limit is per server
    require_server(None)
    setup_pool(gpu_slots, heartbeat_s)
    out.print(f"gpu limit: {gpu_slots} slot(s); runs without a heartbeat for {2 * heartbeat_s} s: crashed")
