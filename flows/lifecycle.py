"""Release management as Prefect flows: promote, roll back a document, roll back a whole release.

The CLI calls the same task-layer functions directly (no flow-engine start-up for a one-row change);
these flows exist for deployments, automations and the Prefect UI, with the flow run id on every event.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow
from prefect.runtime import flow_run

from tasks import lifecycle, release


def _run_id() -> str | None:
    return str(flow_run.id) if flow_run.id else None


@flow(name="promote")
def promote(
    config: str,
    document: str,
    version: str | None = None,
    actor: str | None = None,
    reason: str | None = None,
) -> dict:
    move = lifecycle.promote(config, document, version, actor=actor, reason=reason, flow_run_id=_run_id())
    release.write_release(config, actor=actor, reason=f"promote {document}", flow_run_id=_run_id())
    return asdict(move)


@flow(name="rollback")
def rollback(
    config: str, document: str, to: str | None = None, actor: str | None = None, reason: str | None = None
) -> dict:
    move = lifecycle.rollback(config, document, to, actor=actor, reason=reason, flow_run_id=_run_id())
    release.write_release(config, actor=actor, reason=f"rollback {document}", flow_run_id=_run_id())
    return asdict(move)


@flow(name="rollback-release")
def rollback_release(
    config: str, release: str, actor: str | None = None, reason: str | None = None
) -> list[dict]:
    moves = lifecycle.rollback_release(config, release, actor=actor, reason=reason, flow_run_id=_run_id())
    return [asdict(m) for m in moves]
