"""The `gate` step: every metric and the verdict go to the catalog; the stored adapter folder is untouched."""

from __future__ import annotations

import hashlib

import yaml

from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter
from tasks.catalog.types import AdapterState
from tasks.gate import gate
from tasks.generate import generate
from tasks.runtime import forget_runtimes, runtime
from tasks.sweep import sweep
from tests.fixtures.kb import record_all


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_gate_records_the_verdict_in_the_catalog_and_never_writes_the_stored_folder(kb):
    data = yaml.safe_load(kb.read_text())
    data["gates"] = {"enabled": True, "auto_probes": 2, "preservation_tokens": 64}
    kb.write_text(yaml.safe_dump(data))
    forget_runtimes()
    record_all(kb)
    todo = sweep(str(kb), "docs")
    adapter_id = generate(str(kb), todo.versions[0], todo.generator_id).adapter_id
    rt = runtime(kb)
    with session_scope(rt.sessions) as s:
        folder = rt.store.get_dir(s.get(Adapter, adapter_id).store_uri)
    before = _digest(folder)
    outcome = gate(str(kb), adapter_id)
    assert _digest(folder) == before
    with session_scope(rt.sessions) as s:
        adapter = s.get(Adapter, adapter_id)
        assert adapter.qa_results and {q.suite for q in adapter.qa_results} >= {"knowledge", "preservation"}
        assert adapter.state is (AdapterState.PASSED if outcome.passed else AdapterState.FAILED)
    assert sweep(str(kb), "docs").ungated == []
