"""The `generate-adapters` flow: a worker's share of a distributed refresh (deployed on the `gpu` pool).

A refresh configured with ``execution: {pool: gpu}`` submits its pending versions in batches as flow runs
of this flow's deployment (``tasks/dispatch.py``). A worker runs one: it loads the base model and the
generator once, generates the batch (``generate_batch``: one batched pass through the hypernetwork where
the generator allows it), gates the new adapters and any a crashed run left ungated, writes them to the
store and records them in the catalog. The refresh waits for it, then registers what it recorded.

While it uses the device the run holds one slot of the ``gpu`` global concurrency limit, which
``instill pool-setup`` sizes to the pool's devices, so workers never oversubscribe one. The run ends
``Completed`` with the versions it could not generate (and why) in its state message; a killed run ends
``Crashed`` (by its worker, or by the heartbeat automation when the worker died with it) and its
versions stay pending for the next refresh.
"""

from __future__ import annotations

import time

from prefect import flow, task
from prefect.runtime import flow_run
from prefect.states import Completed

from tasks.dispatch import report_message
from tasks.gate import gate
from tasks.generate import batch_kind, generate_batch
from tasks.lock import GPU_LIMIT
from tasks.runtime import runtime

generate_task = task(generate_batch, name="generate")
gate_task = task(gate, name="gate")


@flow(name="generate-adapters")
def generate_adapters(
    config: str, version_ids: list[int], generator_id: int, ungated: list[int] | None = None
):
    """Generate and gate one batch of the refresh of the knowledge base in ``config``."""
    from prefect.concurrency.sync import concurrency

    run_id = str(flow_run.id) if flow_run.id else None
    rt = runtime(config)
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return clock[-1] - clock[-2]

    with concurrency(GPU_LIMIT, occupy=1):
        seconds = {"slot": lap()}
        rt.generator(batch_kind(config, version_ids))  # the base model and the generator, once per batch
        seconds["load"] = lap()
        generated = generate_task(config, version_ids, generator_id, run_id)
        seconds["generate"] = lap()
        seconds["generator"] = sum(g.seconds for g in generated)  # inside the generator itself
        new = [g.adapter_id for g in generated if g.adapter_id is not None]
        to_gate = sorted(set(ungated or []) | set(new)) if rt.kb.gates.enabled else []
        gated = [gate_task(config, adapter_id, run_id) for adapter_id in to_gate]
        seconds["gate"] = lap()
    done = sum(1 for g in generated if g.adapter_id is not None)
    passed = sum(1 for g in gated if g.passed)
    return Completed(
        message=report_message(generated, seconds),
        data={"generated": done, "failed": len(generated) - done, "gated": len(gated), "passed": passed},
    )
