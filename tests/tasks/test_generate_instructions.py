"""A worker's share for instruction documents, without Prefect: the sweep hands them apart with the T2L
generator's row, `generate_batch` (what a pool worker runs) makes T2L adapters, `gate` runs the
instruction gate, and a later sweep finds nothing to do without loading the model."""

from __future__ import annotations

from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter
from tasks.gate import gate
from tasks.generate import batch_kind, generate_batch
from tasks.runtime import forget_runtimes, runtime
from tasks.settings import DocumentKind
from tasks.sweep import sweep
from tests.fixtures.instructions import STYLE, instruction_kb
from tests.fixtures.kb import record_all


def test_instruction_versions_go_to_t2l_on_a_worker_and_get_the_instruction_gate(
    tiny_model_dir, tiny_t2l_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    config = instruction_kb(tmp_path, tiny_model_dir, tiny_t2l_dir, {"style.md": STYLE, "tone.md": STYLE})
    record_all(config)
    todo = sweep(str(config), "docs")
    assert len(todo.versions) == 1 and len(todo.instructions) == 2
    assert todo.instruction_generator_id not in (None, todo.generator_id)

    assert batch_kind(str(config), todo.instructions) == DocumentKind.INSTRUCTION
    assert batch_kind(str(config), todo.versions) == DocumentKind.KNOWLEDGE
    made = generate_batch(str(config), todo.instructions, todo.instruction_generator_id, "worker-run")
    assert all(o.error is None for o in made) and sorted(o.reused for o in made) == [False, True]
    verdict = gate(str(config), made[0].adapter_id)
    with session_scope(runtime(config).sessions) as s:
        adapter = s.get(Adapter, made[0].adapter_id)
        assert adapter.kind == "instruction" and adapter.generator.kind == "t2l"
        assert {q.suite for q in adapter.qa_results} == {"instruction"} and verdict.passed

    forget_runtimes()  # a new process: both generators' fingerprints are cached in the home
    again = sweep(str(config), "docs")
    assert again.instructions == [] and again.versions == todo.versions
    assert not runtime(config).base_loaded, "the sweep loaded the model to find the T2L generator's row"
