"""The `refresh` flow: per source detect, record, sweep, generate, gate, register, retire, finish; release.

Generation and gates run here (embedded, the default) or, with ``execution: {pool: ...}`` in
``instill.yaml``, on the workers of that Prefect work pool: the `dispatch` step submits the pending
versions in batches as flow runs of the ``generate-adapters`` deployment (flows/generate_adapters.py) and
waits for them; everything else (detection, recording, registration, retirement, the release) stays here.

Reads like the process it runs. Each step is a plain function in ``tasks/<step>.py`` wrapped thinly as a
task of the same name; only ids, paths and small records cross task boundaries. The adapter ids that
`generate` returns are what `gate` and `register` receive, together with the leftovers the `sweep` found
in the catalog (a crashed run's unfinished work). A source's cursor moves only once every change it
covers is recorded.

The body is ``run_refresh``, given the steps to call: the Prefect tasks inside the flow, or the plain
functions. The CLI holds the knowledge base's lock (``tasks/lock.py``), detects without Prefect and
starts the flow only when something needs generating, gating or registering; a refresh with nothing to do
runs the plain steps and costs no Prefect server, no base model and no MLflow (docs/reliability.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from tasks.catalog.types import RunStatus
from tasks.detect import SourcePlan, detect
from tasks.dispatch import dispatch
from tasks.finish import finish
from tasks.gate import gate
from tasks.generate import generate
from tasks.lock import prefect_slot, refresh_lock
from tasks.record import record
from tasks.register import register
from tasks.release import write_release
from tasks.retire import retire
from tasks.runtime import runtime
from tasks.sources.base import ChangeKind
from tasks.sweep import sweep

# Task names are the names of the modules that hold the steps (tasks/<name>.py).
detect_task = task(detect, name="detect")
record_task = task(record, name="record")
sweep_task = task(sweep, name="sweep")
generate_task = task(generate, name="generate")
gate_task = task(gate, name="gate")
dispatch_task = task(dispatch, name="dispatch")


def _retry_unless_unreachable(task, task_run, state) -> bool:
    """Retry a registry call that failed, but not one that found the registry down (it fails at once)."""
    from tasks.errors import EnvironmentProblem

    return not isinstance(state.result(raise_on_failure=False), EnvironmentProblem)


_registry_retries = {
    "retries": 2,
    "retry_delay_seconds": [1, 5],
    "retry_condition_fn": _retry_unless_unreachable,
}
register_task = task(register, name="register", **_registry_retries)
retire_task = task(retire, name="retire", **_registry_retries)
finish_task = task(finish, name="finish")
release_task = task(write_release, name="release", **_registry_retries)


@dataclass(frozen=True)
class Steps:
    """The steps a refresh runs: Prefect tasks inside the flow, the plain functions without Prefect."""

    detect: Callable
    record: Callable
    sweep: Callable
    generate: Callable
    gate: Callable
    register: Callable
    retire: Callable
    finish: Callable
    release: Callable
    dispatch: Callable  # generate and gate on the pool's workers (distributed execution)


PREFECT_STEPS = Steps(
    detect_task,
    record_task,
    sweep_task,
    generate_task,
    gate_task,
    register_task,
    retire_task,
    finish_task,
    release_task,
    dispatch_task,
)
PLAIN_STEPS = Steps(detect, record, sweep, generate, gate, register, retire, finish, write_release, dispatch)


@dataclass
class RefreshSummary:
    changed: Counter = field(default_factory=Counter)
    generated: int = 0
    passed: int = 0  # adapters that passed their QA gates
    registered: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    retired: int = 0
    sources: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # one per document touched, for the tables
    skipped: list[dict] = field(default_factory=list)  # files a source could not read, with the reason
    truncated: list[dict] = field(default_factory=list)  # adapters that cover part of their document
    still_failed: list[dict] = field(default_factory=list)  # documents failed at the end, from any run
    crashed_runs: int = 0  # runs a killed refresh left open, closed by this one
    prefect: bool = True  # False: nothing needed generating, the steps ran without a Prefect server

    def as_dict(self) -> dict:
        out = asdict(self)
        out["changed"] = {kind.value: self.changed.get(kind.value, 0) for kind in ChangeKind}
        return out


_PLANS: dict[str, tuple[list[SourcePlan], StepProgress | None]] = {}  # what the CLI hands the flow


def hand_over(config: str, plans: list[SourcePlan], progress: StepProgress | None = None) -> None:
    """Give the flow the plans the CLI already detected and its progress display (same process)."""
    _PLANS[config] = (plans, progress)


@flow(name="refresh")
def refresh(config: str) -> dict:
    """Bring every source of the knowledge base in ``config`` up to date; returns the run's summary."""
    run_id = str(flow_run.id) if flow_run.id else None
    rt = runtime(config)
    # Distributed: the lock is mirrored in a Prefect global concurrency limit, shown in the Prefect UI.
    slot = prefect_slot(rt.kb.name, run_id) if rt.kb.execution.distributed else nullcontext()
    with refresh_lock(rt.settings.catalog, rt.settings.home, rt.kb.name, rt.settings.lock_wait_s), slot:
        plans, progress = _PLANS.pop(config, (None, None))
        if plans is None:  # started by a deployment, not by the CLI (which closed them already)
            from tasks.finish import close_crashed_runs

            close_crashed_runs(config)
        result = run_refresh(config, run_id, PREFECT_STEPS, plans, progress)
    create_markdown_artifact(markdown_report(result), key="refresh-summary", description="instill refresh")
    return result


def nothing_to_do(config: str, plans: list[SourcePlan]) -> bool:
    """True when no source changed and the catalog holds no unfinished work: no model, no Prefect."""
    if any(p.changes for p in plans):
        return False
    for plan in plans:
        todo = sweep(config, plan.source)
        if todo.versions or todo.instructions or todo.ungated or todo.unregistered or todo.deleted:
            return False
    return True


def run_refresh(
    config: str,
    run_id: str | None,
    steps: Steps,
    plans: list[SourcePlan] | None = None,
    progress: StepProgress | None = None,
) -> dict:
    """The refresh itself, per source: detect (unless the plans are given), record, sweep, generate,
    gate, register, retire, finish; then the release. Called by the flow with Prefect tasks, and by the
    CLI with the plain functions when there is nothing to generate."""
    summary = RefreshSummary(prefect=steps is PREFECT_STEPS)
    rt = runtime(config)
    progress = progress or StepProgress()
    kb = rt.kb
    by_source = {p.source: p for p in plans or []}
    for name in [s.name for s in kb.sources]:
        plan = by_source.get(name) or steps.detect(config, name, run_id)
        summary.skipped += [{"source": name, "reason": w} for w in plan.warnings]
        if plan.error:
            steps.finish(
                config, plan.run_id, RunStatus.FAILED, None, {}, error=plan.error, flow_run_id=run_id
            )
            summary.failed.append({"document": f"{name}:*", "reason": plan.error})
            summary.sources.append({"source": name, "status": RunStatus.FAILED.value, "error": plan.error})
            continue
        recorded = progress.each(
            f"{name}: fetch and parse",
            plan.changes,
            lambda c: steps.record(config, name, c, run_id),  # noqa: B023 - called at once
        )
        todo = steps.sweep(config, name)  # what this run recorded, and what a crashed run left undone
        generated, gated, not_gated = _generate_and_gate(config, name, todo, run_id, steps, progress)
        new = [g.adapter_id for g in generated if g.adapter_id is not None]
        to_register = [a for a in _merge(todo.unregistered, new) if a not in not_gated]
        registered, unregistered = [], []
        for adapter_id in progress.each(f"{name}: register", to_register, lambda a: a):
            outcome = _registry_call(steps.register, config, adapter_id, run_id)
            (unregistered if isinstance(outcome, Unreachable) else registered).append(outcome)
        retired, retire_errors = 0, []
        for doc_id in todo.deleted:
            outcome = _registry_call(steps.retire, config, doc_id, run_id)
            if isinstance(outcome, Unreachable):
                retire_errors.append(outcome)
            else:
                retired += outcome
        status = _source_status(recorded, generated, gated)
        if unregistered or retire_errors:
            status = RunStatus.PARTIAL if status is RunStatus.SUCCEEDED else status
        counts = _tally(summary, name, recorded, generated, gated, registered, retired)
        for reason in sorted(set(unregistered + retire_errors)):
            summary.failed.append(
                {"document": f"{name}:*", "reason": f"{reason} (recorded; the next refresh registers it)"}
            )
        steps.finish(config, plan.run_id, status, plan.cursor, counts, flow_run_id=run_id)
        summary.sources.append({"source": name, "status": status.value, **counts})
    result = summary.as_dict()
    release = _registry_call(steps.release, config, reason="refresh", flow_run_id=run_id)
    if isinstance(release, Unreachable):
        result["failed"].append({"document": "*", "reason": f"release not written: {release}"})
        release = None
    result["release"] = release
    result["still_failed"] = _still_failed(config, {f["document"] for f in result["failed"]})
    return result


def _generate_and_gate(config: str, source: str, todo, run_id, steps: Steps, progress: StepProgress):
    """Generate the pending versions and gate the new adapters (and the leftovers), here or on the pool.

    Knowledge versions go through the configured generator, instruction versions through Text-to-LoRA
    (each with its own generator row); `gate` picks each adapter's gates by its kind. Returns the
    generate and gate outcomes, and the adapters still without a verdict (a worker died before gating
    them): those are not registered; the next refresh gates them."""
    kb = runtime(config).kb
    work = [(todo.versions, todo.generator_id, "generate")]
    if todo.instructions:
        work.append((todo.instructions, todo.instruction_generator_id, "instructions"))
    if kb.execution.distributed:
        return _dispatch(config, source, todo, work, run_id, steps, progress)
    generated = []
    for versions, generator_id, label in work:
        generated += progress.each(
            f"{source}: {label}",
            versions,
            lambda v, g=generator_id: steps.generate(config, v, g, run_id),
        )
    new = [g.adapter_id for g in generated if g.adapter_id is not None]
    gated = (
        progress.each(f"{source}: gates", _merge(todo.ungated, new), lambda a: steps.gate(config, a, run_id))
        if kb.gates.enabled
        else []
    )
    return generated, gated, set()


def _dispatch(config: str, source: str, todo, work, run_id, steps: Steps, progress: StepProgress):
    """The pool's share: one dispatch per generator (its batches keyed on its fingerprint); the
    leftover adapters to gate ride with the first."""
    kb = runtime(config).kb
    ungated = todo.ungated if kb.gates.enabled else []
    generated, gated, not_gated = [], [], set()
    for versions, generator_id, _ in work:
        if not versions and not ungated:
            continue
        done = progress.each(
            f"{source}: generate and gate on pool {kb.execution.pool}",
            [versions],
            lambda v, g=generator_id, u=ungated: steps.dispatch(config, v, u, g, run_id),
        )[0]
        generated, gated = generated + done.generated, gated + done.gated
        not_gated |= set(done.not_gated)
        ungated = []
    return generated, gated, not_gated


def _registry_call(step, *args, **kwargs):
    """A step that talks to MLflow; with the registry down, its one-line reason instead of an exception."""
    from tasks.errors import EnvironmentProblem

    try:
        return step(*args, **kwargs)
    except EnvironmentProblem as exc:
        return Unreachable(str(exc))


class Unreachable(str):
    """Why a registry step could not run (the registry is down); the work stays recorded for the next run."""


def _still_failed(config: str, reported: set[str]) -> list[dict]:
    """Documents failed at the end of this run that it did not report itself (left by earlier runs)."""
    from sqlalchemy import select

    from tasks.catalog.db import session_scope
    from tasks.catalog.models import Document
    from tasks.catalog.types import DocumentState

    rt = runtime(config)
    out = []
    with session_scope(rt.sessions) as session:
        for doc in session.scalars(select(Document).where(Document.state == DocumentState.FAILED)):
            if doc.source.name in {s.name for s in rt.kb.sources} and doc.label not in reported:
                latest = doc.versions[-1] if doc.versions else None
                out.append({"document": doc.label, "reason": (latest.error if latest else None) or "failed"})
    return out


class StepProgress:
    """Progress of the long steps; the CLI's subclass draws rich bars on a terminal, this one is quiet."""

    def each(self, label: str, items, fn):
        return [fn(item) for item in items]


def _merge(leftover: list[int], new: list[int]) -> list[int]:
    """A crashed run's leftover ids, then this run's new ones, each once, oldest first."""
    return sorted(set(leftover) | set(new))


def _source_status(outcomes, generated, gated) -> RunStatus:
    if any(o.transient for o in outcomes):
        return RunStatus.FAILED  # keeps the cursor: the next run fetches these again
    if any(o.error for o in outcomes) or any(g.error for g in generated) or any(not g.passed for g in gated):
        return RunStatus.PARTIAL
    return RunStatus.SUCCEEDED


def _tally(
    summary: RefreshSummary, source: str, outcomes, generated, gated, registered, retired: int
) -> dict:
    for o in outcomes:
        summary.changed[o.change.kind.value] += 1
        doc = f"{source}:{o.change.key}"
        summary.rows.append(
            {
                "document": doc,
                "change": o.change.kind.value,
                "status": "failed" if o.error else "ok",
                "detail": o.error or (f"from {o.change.old_key}" if o.change.old_key else ""),
            }
        )
        if o.error:
            summary.failed.append({"document": doc, "reason": o.error})
    for g in generated:
        if g.error:
            summary.failed.append({"document": g.document, "reason": g.error})
        else:
            summary.generated += 0 if g.reused else 1
            if g.covered_fraction is not None and g.covered_fraction < 1.0:
                summary.truncated.append({"document": g.document, "covered_fraction": g.covered_fraction})
    for g in gated:
        summary.passed += int(g.passed)
        if not g.passed:
            summary.failed.append(
                {"document": g.document, "reason": "failed QA gates: " + "; ".join(g.failures)}
            )
    for r in registered:
        if not r.gated_out:  # a failed adapter's version holds its metrics but is not for serving
            summary.registered.append(
                {"model": r.model, "version": r.version, "document": r.document, "kind": r.kind}
            )
    summary.retired += retired
    return {
        "changed": len(outcomes),
        "generated": sum(1 for g in generated if not g.error and not g.reused),
        "passed": sum(1 for g in gated if g.passed),
        "registered": sum(1 for r in registered if not r.gated_out),
        "failed": sum(1 for o in outcomes if o.error)
        + sum(1 for g in generated if g.error)
        + sum(1 for g in gated if not g.passed),
        "retired": retired,
    }


def markdown_report(result: dict) -> str:
    changed = result["changed"]
    lines = [
        "# instill refresh",
        "",
        f"**{sum(changed.values())} changed** ({', '.join(f'{v} {k}' for k, v in changed.items())}), "
        f"{result['generated']} generated, {result['passed']} passed QA, "
        f"{len(result['registered'])} registered, "
        f"{len(result['failed'])} failed, {result['retired']} retired.",
        "",
        "| document | change | status | detail |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['document']} | {r['change']} | {r['status']} | {r['detail']} |" for r in result["rows"]]
    if result["registered"]:
        lines += ["", "| model | version | document |", "|---|---|---|"]
        lines += [f"| {r['model']} | {r['version']} | {r['document']} |" for r in result["registered"]]
    if result["failed"]:
        lines += ["", "| failed document | reason |", "|---|---|"]
        lines += [f"| {f['document']} | {f['reason']} |" for f in result["failed"]]
    if result.get("still_failed"):
        lines += ["", "| still failed (earlier runs) | reason |", "|---|---|"]
        lines += [f"| {f['document']} | {f['reason']} |" for f in result["still_failed"]]
    if result.get("truncated"):
        lines += ["", "| truncated document | covered fraction |", "|---|---|"]
        lines += [f"| {t['document']} | {t['covered_fraction']:.3f} |" for t in result["truncated"]]
    if result.get("skipped"):
        lines += ["", "| skipped in source | reason |", "|---|---|"]
        lines += [f"| {k['source']} | {k['reason']} |" for k in result["skipped"]]
    if result.get("release"):
        lines += ["", f"Production changed: release {result['release']} written."]
    return "\n".join(lines) + "\n"
