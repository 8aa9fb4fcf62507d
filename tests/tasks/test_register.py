"""The `register` step: a registry version per adapter (idempotent), the verdict on it, aliases on record."""

from __future__ import annotations

from sqlalchemy import select

from tasks.catalog.db import session_scope
from tasks.catalog.models import AliasEvent
from tasks.generate import generate
from tasks.register import register
from tasks.runtime import runtime
from tasks.sweep import sweep
from tests.fixtures.kb import record_all


def test_register_sets_candidate_and_production_once_and_tags_the_verdict(kb):
    record_all(kb)
    todo = sweep(str(kb), "docs")
    adapter_id = generate(str(kb), todo.versions[0], todo.generator_id).adapter_id
    outcome = register(str(kb), adapter_id, flow_run_id="run-1")
    assert outcome.promoted and not outcome.gated_out and outcome.version == "1"
    rt = runtime(kb)
    assert (
        rt.registry.alias(outcome.model, "candidate") == rt.registry.alias(outcome.model, "production") == "1"
    )
    tags = rt.registry.client.get_model_version(outcome.model, "1").tags
    assert tags["qa_verdict"] == "not gated" and tags["document_id"] == outcome.model.rsplit("-", 1)[1]
    again = register(str(kb), adapter_id, flow_run_id="run-2")
    assert again.version == "1", "registration is idempotent by adapter sha256"
    with session_scope(rt.sessions) as s:
        events = s.scalars(select(AliasEvent).order_by(AliasEvent.id)).all()
        assert [(e.alias, e.to_version, e.flow_run_id) for e in events] == [
            ("candidate", "1", "run-1"),
            ("production", "1", "run-1"),
        ]
    assert adapter_id not in sweep(str(kb), "docs").unregistered
