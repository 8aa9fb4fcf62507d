"""The pieces of distributed execution that need no server: batches, idempotency keys, a worker's
`generate_batch`, and the `execution` settings. (The whole path, with a Prefect server and workers, is
tests/flows/test_distributed.py.)"""

from __future__ import annotations

import pytest
import yaml

from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter
from tasks.dispatch import Batch, batches, idempotency_key, report_message, run_report
from tasks.generate import generate_batch
from tasks.outcomes import GenerateOutcome
from tasks.runtime import runtime
from tasks.settings import ConfigError, load_knowledge_base
from tasks.sweep import sweep
from tests.fixtures.kb import DOCS, record_all


def test_batches_keep_order_and_leftovers_ride_with_the_first():
    assert batches([1, 2, 3, 4, 5], [], 2) == [Batch([1, 2]), Batch([3, 4]), Batch([5])]
    assert batches([1, 2, 3], [9], 2) == [Batch([1, 2], [9]), Batch([3])]
    assert batches([], [7, 8], 16) == [Batch([], [7, 8])]
    assert batches([], [], 4) == []


def test_the_same_batch_of_the_same_generator_gets_the_same_key():
    key = idempotency_key(Batch([3, 1, 2]), "f" * 64)
    assert key == idempotency_key(Batch([1, 2, 3]), "f" * 64), "order does not matter"
    assert key != idempotency_key(Batch([1, 2]), "f" * 64)
    assert key != idempotency_key(Batch([1, 2, 3]), "e" * 64), "another generator: another run"
    assert key != idempotency_key(Batch([1, 2, 3], [4]), "f" * 64)
    follow_up = idempotency_key(Batch([1, 2, 3]), "f" * 64, after="run-1")
    assert follow_up != key and follow_up == idempotency_key(Batch([1, 2, 3]), "f" * 64, after="run-1")


def test_a_worker_report_round_trips_through_the_state_message():
    class State:
        message = report_message(
            [
                GenerateOutcome(1, 5, "docs:a"),
                GenerateOutcome(2, None, "docs:b", error="generation failed: x"),
            ],
            {"load": 1.23456},
        )

    class Run:
        state = State()

    assert run_report(Run()) == {"failed": {"2": "generation failed: x"}, "seconds": {"load": 1.235}}


def test_generate_batch_records_one_adapter_per_version_and_reuses_within_the_batch(kb):
    (kb.parent / "docs" / "alpha-copy.md").write_text(DOCS["alpha.md"])
    record_all(kb)
    todo = sweep(str(kb), "docs")
    outcomes = generate_batch(str(kb), todo.versions, todo.generator_id, "run-1")
    assert [o.version_id for o in outcomes] == todo.versions and all(o.error is None for o in outcomes)
    assert sorted(o.reused for o in outcomes) == [False, False, False, True], "the copy reuses the original"
    again = generate_batch(str(kb), todo.versions, todo.generator_id, "run-2")
    assert [o.adapter_id for o in again] == [o.adapter_id for o in outcomes] and all(o.reused for o in again)
    with session_scope(runtime(kb).sessions) as s:
        rows = s.query(Adapter).all()
        assert len(rows) == 4 and {a.flow_run_id for a in rows} == {"run-1"}
        assert len({a.store_uri for a in rows}) == 3


def test_execution_settings(tmp_path):
    body = {"name": "kb", "sources": [{"kind": "local", "name": "d", "path": "."}]}
    config = tmp_path / "instill.yaml"
    config.write_text(yaml.safe_dump(body))
    assert not load_knowledge_base(config).execution.distributed, "embedded by default"
    config.write_text(yaml.safe_dump(body | {"execution": {"pool": "gpu", "batch_size": 4}}))
    execution = load_knowledge_base(config).execution
    assert (
        execution.distributed
        and execution.batch_size == 4
        and execution.deployment == "generate-adapters/gpu"
    )
    config.write_text(yaml.safe_dump(body | {"execution": {"pool": "gpu", "batch_size": 0}}))
    with pytest.raises(ConfigError, match="execution.batch_size"):
        load_knowledge_base(config)
