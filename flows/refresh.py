"""The `refresh` flow: per source detect, record, sweep, generate, gate, register, retire, finish; release.

Reads like the process it runs. Each step is a plain function in ``tasks/<step>.py`` wrapped thinly as a
task of the same name; only ids, paths and small records cross task boundaries. The adapter ids that
`generate` returns are what `gate` and `register` receive, together with the leftovers the `sweep` found
in the catalog (a crashed run's unfinished work). A source's cursor moves only once every change it
covers is recorded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from tasks.catalog.types import RunStatus
from tasks.detect import detect
from tasks.finish import finish
from tasks.gate import gate
from tasks.generate import generate
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
register_task = task(register, name="register", retries=2, retry_delay_seconds=[1, 5])
retire_task = task(retire, name="retire", retries=2, retry_delay_seconds=[1, 5])
finish_task = task(finish, name="finish")
release_task = task(write_release, name="release", retries=2, retry_delay_seconds=[1, 5])


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

    def as_dict(self) -> dict:
        out = asdict(self)
        out["changed"] = {kind.value: self.changed.get(kind.value, 0) for kind in ChangeKind}
        return out


@flow(name="refresh")
def refresh(config: str) -> dict:
    """Bring every source of the knowledge base in ``config`` up to date; returns the run's summary."""
    run_id = str(flow_run.id) if flow_run.id else None
    summary = RefreshSummary()
    kb = runtime(config).kb
    for name in [s.name for s in kb.sources]:
        plan = detect_task(config, name, run_id)
        if plan.error:
            finish_task(config, plan.run_id, RunStatus.FAILED, None, {}, error=plan.error)
            summary.failed.append({"document": f"{name}:*", "reason": plan.error})
            summary.sources.append({"source": name, "status": RunStatus.FAILED.value, "error": plan.error})
            continue
        recorded = [record_task(config, name, change, run_id) for change in plan.changes]
        todo = sweep_task(config, name)  # what this run recorded, and what a crashed run left undone
        generated = [generate_task(config, v, todo.generator_id, run_id) for v in todo.versions]
        new = [g.adapter_id for g in generated if g.adapter_id is not None]
        gated = [gate_task(config, a, run_id) for a in _merge(todo.ungated, new)] if kb.gates.enabled else []
        registered = [register_task(config, a, run_id) for a in _merge(todo.unregistered, new)]
        retired = sum(retire_task(config, d, run_id) for d in todo.deleted)
        status = _source_status(recorded, generated, gated)
        counts = _tally(summary, name, recorded, generated, gated, registered, retired)
        finish_task(config, plan.run_id, status, plan.cursor, counts)
        summary.sources.append({"source": name, "status": status.value, **counts})
    result = summary.as_dict()
    result["release"] = release_task(config, reason="refresh", flow_run_id=run_id)
    create_markdown_artifact(markdown_report(result), key="refresh-summary", description="instill refresh")
    return result


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
    for g in gated:
        summary.passed += int(g.passed)
        if not g.passed:
            summary.failed.append(
                {"document": g.document, "reason": "failed QA gates: " + "; ".join(g.failures)}
            )
    for r in registered:
        if not r.gated_out:  # a failed adapter's version holds its metrics but is not for serving
            summary.registered.append({"model": r.model, "version": r.version, "document": r.document})
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
    if result.get("release"):
        lines += ["", f"Production changed: release {result['release']} written."]
    return "\n".join(lines) + "\n"
