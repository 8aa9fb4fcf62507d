"""Kill a refresh (SIGKILL, ``INSTILL_FAULT``) at every step, rerun it, and check that nothing was lost or
doubled: one production adapter per live document for its current text, no duplicate versions, adapters
or MLflow versions per sha256, no orphan MLflow versions, deleted documents without aliases, the killed
run closed as `crashed`, no MLflow run left RUNNING, the latest release equal to production."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from tests.fixtures.kb import DOCS, refresh
from tests.flows.reliability import check_invariants, env_for, make_kb, run

# Points reached by a first refresh of a fresh home.
FIRST_TIME = ["catalog-setup", "mlflow-setup"]
# Points reached by a refresh that modifies, deletes and adds documents (the seeded home's second run).
CHANGES = [
    "lock",
    "detect",
    "record",
    "record-write",
    "sweep",
    "generate",
    "register-run",
    "register-version",
    "register-alias",
    "retire",
    "finish",
    "release",
]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny_model_dir) -> Path:
    """A knowledge base refreshed once (three documents in production), to copy per case."""
    folder = tmp_path_factory.mktemp("seeded")
    config = make_kb(folder, tiny_model_dir)
    code, out = run(config, env=env_for(folder))
    assert code == 0, out
    return folder


def _change_documents(folder: Path) -> None:
    docs = folder / "docs"
    (docs / "alpha.md").write_text(DOCS["alpha.md"] + "\nA second engineer, Ilse Brand, joined in 2020.\n")
    (docs / "gamma.html").unlink()
    (docs / "delta.txt").write_text("Delta ferries leave the north pier at dawn and at dusk.\n")


def _crash_then_recover(folder: Path, point: str, monkeypatch) -> str:
    """Kill a refresh (a real process) at ``point``, then rerun it (in this process: no start-up cost)."""
    from tasks.runtime import forget_runtimes

    config = folder / "instill.yaml"
    code, out = run(config, env=env_for(folder, INSTILL_FAULT=point))
    assert code == -signal.SIGKILL, f"{point}: the fault did not fire (exit {code})\n{out}"
    monkeypatch.setenv("INSTILL_HOME", str(folder / ".instill"))
    forget_runtimes()
    code, _, out = refresh(config, folder / "rerun.json")
    forget_runtimes()
    assert code == 0 and "Traceback" not in out, f"{point}: the rerun failed\n{out}"
    check_invariants(config, folder / ".instill")
    return out


@pytest.mark.parametrize("point", FIRST_TIME)
def test_a_crash_in_first_time_setup_is_recovered(
    prefect_server, tmp_path, tiny_model_dir, point, monkeypatch
):
    make_kb(tmp_path, tiny_model_dir)
    out = _crash_then_recover(tmp_path, point, monkeypatch)
    assert "3 registered" in out


@pytest.mark.parametrize("point", CHANGES)
def test_a_crash_at_every_step_is_recovered(prefect_server, seeded, tmp_path, point, monkeypatch):
    folder = tmp_path / "kb"
    shutil.copytree(seeded, folder)
    _change_documents(folder)
    out = _crash_then_recover(folder, point, monkeypatch)
    if point not in ("lock", "release"):  # killed with a refresh run open: the rerun closes it as crashed
        assert "as crashed" in out, out
    from tasks.catalog.types import DocumentState
    from tests.flows.reliability import CHECKED

    assert CHECKED["states"] == {
        "alpha.md": DocumentState.ACTIVE,
        "beta.txt": DocumentState.ACTIVE,
        "gamma.html": DocumentState.DELETED,
        "delta.txt": DocumentState.ACTIVE,
    }


def test_a_half_built_mlflow_database_is_rebuilt(tmp_path):
    """An MLflow database left half-migrated by an older instill (no runs in it) is set aside and rebuilt."""
    import sqlite3

    from tasks.registry import Registry, prepare_sqlite_store

    db = tmp_path / "mlflow.db"
    prepare_sqlite_store(f"sqlite:///{db}")
    with sqlite3.connect(db) as conn:  # as if killed before the later migrations: they would run again
        conn.execute("DELETE FROM experiments")
        conn.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")
    registry = Registry(f"sqlite:///{db}", tmp_path / "art", "kb")
    assert registry.experiment_id()
    assert list(tmp_path.glob("mlflow.db.broken-*"))
