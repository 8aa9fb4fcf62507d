"""A refresh with nothing to do costs next to nothing: no base model, no Prefect server, no MLflow."""

from __future__ import annotations

import subprocess
import sys

from tests.fixtures.kb import refresh
from tests.flows.reliability import REPO, env_for


def test_a_no_op_refresh_loads_no_model_and_starts_no_prefect(prefect_server, kb, tmp_path):
    from tasks.runtime import forget_runtimes, runtime

    code, first, out = refresh(kb, tmp_path / "first.json")
    assert code == 0, out
    forget_runtimes()
    code, second, out = refresh(kb, tmp_path / "second.json")
    assert code == 0 and "0 changed" in out, out
    rt = runtime(kb)
    assert not rt.base_loaded, "the base model was loaded for a no-op refresh"
    assert rt._registry is None, "MLflow was opened for a no-op refresh"


PROBE = """
import sys
from flows.cli import app
try:
    app(["{cmd}", "--config", sys.argv[1]])
except SystemExit:
    pass
print("MODULES", "prefect" in sys.modules, "torch" in sys.modules)
"""


def test_lifecycle_commands_start_no_prefect(kb, tmp_path):
    for cmd in ("status", "releases"):
        proc = subprocess.run(
            [sys.executable, "-c", PROBE.replace("{cmd}", cmd), str(kb)],
            cwd=REPO,
            env=env_for(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "MODULES False False" in proc.stdout, proc.stdout + proc.stderr


def test_bench_pipeline_measures_the_no_op_cost_per_document(tmp_path, monkeypatch):
    """`instill bench-pipeline` on a small catalog (the full run: docs/reliability.md)."""
    from flows.bench_pipeline import _scaling

    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / "unused"))
    (row,) = _scaling([50])
    assert row["documents"] == 50 and 0 < row["noop_s"] < 10
