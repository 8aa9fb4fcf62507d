"""The refresh's `dispatch` step (distributed execution): pending work to the GPU work pool, and back.

With ``execution: {pool: gpu}`` in ``instill.yaml`` a refresh does not generate in its own process. It
cuts the pending versions into batches of ``execution.batch_size`` and submits each as a flow run of the
``generate-adapters`` deployment (``flows/generate_adapters.py``) with ``run_deployment``; a worker on the
pool loads the base model and the generator once per flow run, generates and gates its batch, writes the
adapters to the store and records them in the catalog. This step waits for every run, then reads the
outcome of each version from the catalog, so the refresh registers exactly what the workers recorded.

Idempotency: every submission carries a key derived from its version ids, the adapters it gates and the
generator's fingerprint, so submitting the same batch again (a retried task, a second refresh while the
first's runs are still going) returns the flow run already made instead of a second one. Only when that
run has ended (crashed, or finished with versions still pending) is a follow-up run made, keyed on the
ended run's id, so two refreshes retrying the same batch still make one run. Nothing here is needed for
correctness: ``generate`` re-checks the catalog inside its write transaction, so even two runs of one
batch record one adapter per version.

A version whose run crashed stays pending in the catalog, and an adapter that was not gated stays
ungated: the next refresh's sweep finds both, exactly as after a crash of the embedded refresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

from tasks.catalog import queries
from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter, DocumentVersion, Generator
from tasks.catalog.types import AdapterState
from tasks.outcomes import GateOutcome, GenerateOutcome
from tasks.runtime import runtime

log = logging.getLogger(__name__)

# A worker's flow run ends with this prefix and a JSON object in its state message: the versions it
# could not generate and why, and where its time went (the catalog holds everything else).
REPORT_PREFIX = "instill:"
MAX_FOLLOW_UPS = 8  # follow-up runs of one batch in one refresh, after runs that ended with work pending


@dataclass(frozen=True)
class Batch:
    versions: list[int]  # document versions to generate
    ungated: list[int] = field(default_factory=list)  # adapters a crashed run left without a verdict


@dataclass
class Dispatched:
    """What the workers did, as the refresh needs it: outcomes per version and per gated adapter."""

    generated: list[GenerateOutcome] = field(default_factory=list)
    gated: list[GateOutcome] = field(default_factory=list)
    not_gated: list[int] = field(default_factory=list)  # adapters still without a verdict: not registered
    runs: list[dict] = field(default_factory=list)  # one per flow run: name, id, state, versions


def batches(versions: list[int], ungated: list[int], size: int) -> list[Batch]:
    """Versions in batches of ``size`` (in order); leftover adapters to gate ride with the first batch."""
    out = [Batch(versions[i : i + size]) for i in range(0, len(versions), size)]
    if ungated:
        out = [Batch(out[0].versions, list(ungated)), *out[1:]] if out else [Batch([], list(ungated))]
    return out


def idempotency_key(batch: Batch, fingerprint: str, after: str | None = None) -> str:
    """The same batch of the same generator always gets the same key (``after``: a follow-up run)."""
    payload = {"versions": sorted(batch.versions), "ungated": sorted(batch.ungated), "generator": fingerprint}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:40]
    return f"generate-adapters:{digest}" + (f":after:{after}" if after else "")


def require_server(deployment: str | None) -> None:
    """Distributed execution needs a Prefect server (``PREFECT_API_URL``) that has the worker deployment;
    otherwise one ``OrchestratorUnavailable`` line, before anything is submitted."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from tasks.errors import OrchestratorUnavailable, first_line

    url = PREFECT_API_URL.value()
    if not url:
        raise OrchestratorUnavailable(
            "execution.pool needs a Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)"
        )
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
        if problem is not None:
            raise OrchestratorUnavailable(f"Prefect server at {url}: {first_line(problem)}")
        try:
            if deployment:
                client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise OrchestratorUnavailable(
                f"deployment {deployment} not found on the Prefect server at {url}: "
                "deploy it (prefect --no-prompt deploy --prefect-file infra/prefect.yaml --all)"
            ) from None


def dispatch(
    config: str, versions: list[int], ungated: list[int], generator_id: int, flow_run_id: str | None = None
) -> Dispatched:
    """Submit ``versions`` (and ``ungated`` adapters to gate) to the pool, wait, read the outcomes."""
    rt = runtime(config)
    ex = rt.kb.execution
    with session_scope(rt.sessions) as session:
        fingerprint = session.get(Generator, generator_id).fingerprint
    submitted = [
        (batch, _submit(config, batch, generator_id, fingerprint))
        for batch in batches(versions, ungated, ex.batch_size)
    ]
    log.info("submitted %d batch(es) to %s on pool %s", len(submitted), ex.deployment, ex.pool)
    finished = _wait([run.id for _, run in submitted], ex.timeout_s, ex.poll_s)
    return _outcomes(config, generator_id, [(batch, finished[run.id]) for batch, run in submitted])


def _submit(config: str, batch: Batch, generator_id: int, fingerprint: str):
    """One flow run of the deployment for ``batch`` (the existing one when this batch was submitted)."""
    from prefect.deployments import run_deployment

    ex = runtime(config).kb.execution
    parameters = {
        "config": config,
        "version_ids": batch.versions,
        "generator_id": generator_id,
        "ungated": batch.ungated,
    }
    after = None
    for _ in range(MAX_FOLLOW_UPS):
        key = idempotency_key(batch, fingerprint, after)
        run = run_deployment(ex.deployment, parameters=parameters, timeout=0, idempotency_key=key)
        if run.state is None or not run.state.is_final():
            return run
        # The key's run ended before: its work is still pending (we were asked for it), so a follow-up.
        log.info("flow run %s of this batch ended %s: submitting a follow-up", run.name, run.state.type.value)
        after = str(run.id)
    return run


def _wait(ids: list, timeout_s: float, poll_s: float) -> dict:
    """The flow runs once every one has ended (or as they are at the deadline), by id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
            )
            if all(r.state is not None and r.state.is_final() for r in runs) or time.monotonic() > deadline:
                return {r.id: r for r in runs}
            time.sleep(poll_s)


def _outcomes(config: str, generator_id: int, finished: list) -> Dispatched:
    """Per version: its adapter as the catalog has it now, else why it has none; per adapter: its verdict."""
    rt = runtime(config)
    out = Dispatched()
    with session_scope(rt.sessions) as session:
        for batch, run in finished:
            state = run.state.type.value if run.state else "UNKNOWN"
            report = run_report(run)
            failures = report.get("failed", {})
            out.runs.append(run_timing(run) | {"state": state, "versions": batch.versions} | report)
            mine = [
                _generated(session, v, queries.own_adapter(session, v, generator_id), run, state, failures)
                for v in batch.versions
            ]
            out.generated += mine
            made = [g.adapter_id for g in mine if g.adapter_id]
            for adapter_id in sorted(set(batch.ungated) | set(made)) if rt.kb.gates.enabled else []:
                adapter = session.get(Adapter, adapter_id)
                if adapter.state is AdapterState.CANDIDATE and not adapter.qa_results:
                    out.not_gated.append(adapter_id)
                else:
                    out.gated.append(_verdict(adapter))
    return out


def _generated(session, version_id: int, adapter, run, state: str, failures: dict) -> GenerateOutcome:
    document = session.get(DocumentVersion, version_id).document.label
    if adapter is None:
        ended = f"ended {state}" if run.state and run.state.is_final() else f"still {state} at the timeout"
        reason = failures.get(str(version_id)) or (
            f"not generated: worker flow run {run.name} {ended}; the next refresh generates it"
        )
        return GenerateOutcome(version_id, None, document, error=reason)
    reused = adapter.flow_run_id != str(run.id) or _older_with_same_files(session, adapter)
    return GenerateOutcome(
        version_id, adapter.id, document, reused=reused, covered_fraction=adapter.covered_fraction
    )


def _older_with_same_files(session, adapter: Adapter) -> bool:
    """The adapter reuses another's files (same text, same generator): it was not generated for itself."""
    from sqlalchemy import select

    same = select(Adapter.id).where(Adapter.adapter_sha256 == adapter.adapter_sha256, Adapter.id < adapter.id)
    return session.scalars(same).first() is not None


def _verdict(adapter: Adapter) -> GateOutcome:
    document = adapter.document_version.document.label
    if adapter.state is AdapterState.FAILED:
        return GateOutcome(adapter.id, document, False, tuple((adapter.error or "failed").split("; ")))
    return GateOutcome(adapter.id, document, True)


def run_timing(run) -> dict:
    """A flow run's name and id, how long it waited for a worker and how long it ran (seconds)."""
    waited = (run.start_time - run.created).total_seconds() if run.start_time and run.created else None
    ran = (run.end_time - run.start_time).total_seconds() if run.end_time and run.start_time else None
    return {"name": run.name, "id": str(run.id), "waited_s": waited, "ran_s": ran}


def run_report(run) -> dict:
    """What a worker's flow run reported in its final state message (empty if it never finished)."""
    message = (run.state.message or "") if run.state else ""
    if not message.startswith(REPORT_PREFIX):
        return {}
    try:
        return json.loads(message[len(REPORT_PREFIX) :])
    except ValueError:
        return {}


def report_message(outcomes: list[GenerateOutcome], seconds: dict[str, float]) -> str:
    """The worker's final state message: the versions it could not generate (with the reason) and the
    seconds it spent loading, generating and gating."""
    failed = {str(o.version_id): o.error for o in outcomes if o.error}
    return REPORT_PREFIX + json.dumps(
        {"failed": failed, "seconds": {k: round(v, 3) for k, v in seconds.items()}}
    )
