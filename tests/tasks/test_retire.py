"""The `retire` step: a deleted document loses its aliases (on record) and its adapters retire."""

from __future__ import annotations

from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter
from tasks.catalog.types import AdapterState
from tasks.generate import generate
from tasks.register import register
from tasks.retire import retire
from tasks.runtime import runtime
from tasks.sweep import sweep
from tests.fixtures.kb import record_all


def test_retire_removes_the_aliases_of_a_deleted_document(kb):
    record_all(kb)
    todo = sweep(str(kb), "docs")
    adapter_id = generate(str(kb), todo.versions[0], todo.generator_id).adapter_id
    model = register(str(kb), adapter_id).model
    (kb.parent / "docs" / "alpha.md").unlink()
    record_all(kb)
    deleted = sweep(str(kb), "docs").deleted
    assert len(deleted) == 1 and retire(str(kb), deleted[0]) == 1
    rt = runtime(kb)
    assert rt.registry.alias(model, "production") is None and rt.registry.alias(model, "candidate") is None
    with session_scope(rt.sessions) as s:
        assert s.get(Adapter, adapter_id).state is AdapterState.RETIRED
    assert sweep(str(kb), "docs").deleted == []
