"""The `sweep` step: the catalog's unfinished work for a source, and the generator's catalog row."""

from __future__ import annotations

from tasks.sweep import sweep
from tests.fixtures.kb import record_all


def test_sweep_lists_recorded_versions_with_no_adapter_and_keeps_one_generator_row(kb):
    _, outcomes = record_all(kb)
    todo = sweep(str(kb), "docs")
    assert todo.versions == sorted(o.version_id for o in outcomes)
    assert todo.ungated == todo.unregistered == todo.deleted == []
    assert sweep(str(kb), "docs").generator_id == todo.generator_id
    assert sweep(str(kb), "nowhere").versions == []
