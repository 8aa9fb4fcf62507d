"""One refresh per knowledge base: two refreshes at once (real processes) on SQLite and on PostgreSQL do
the work once; a refresh that finds the lock held past its wait exits 3 naming the holder; a lock whose
holder was killed (-9) is free again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.flows.reliability import REPO, check_invariants, env_for, make_kb, run, start, summary


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_refreshes_at_once_do_the_work_once(prefect_server, tmp_path, tiny_model_dir, backend, request):
    config = make_kb(tmp_path, tiny_model_dir)
    extra = {"INSTILL_LOCK_WAIT_S": "600"}
    if backend == "postgresql":
        extra["INSTILL_CATALOG_URL"] = request.getfixturevalue("postgres_databases")()
    env = env_for(tmp_path, **extra)
    if backend == "postgresql":
        from tasks.catalog.db import upgrade

        upgrade(extra["INSTILL_CATALOG_URL"])
    procs = [start(config, "--json", str(tmp_path / f"s{i}.json"), env=env) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    changed = sorted(sum(summary(tmp_path / f"s{i}.json")["changed"].values()) for i in range(2))
    assert changed == [0, 3], outs
    check_invariants(config, tmp_path / ".instill", extra.get("INSTILL_CATALOG_URL"))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_second_refresh_gives_up_with_exit_3_naming_the_holder(tmp_path, tiny_model_dir, backend, request):
    from tasks.lock import refresh_lock

    config = make_kb(tmp_path, tiny_model_dir)
    extra = {"INSTILL_LOCK_WAIT_S": "0.5"}
    url = f"sqlite:///{tmp_path / '.instill' / 'catalog.db'}"
    if backend == "postgresql":
        url = extra["INSTILL_CATALOG_URL"] = request.getfixturevalue("postgres_databases")()
        from tasks.catalog.db import upgrade

        upgrade(url)
    with refresh_lock(url, tmp_path / ".instill", "testkb", 0):
        code, out = run(config, env=env_for(tmp_path, **extra))
    assert code == 3, out
    assert f"refresh of testkb already running (pid {os.getpid()}, host" in out and "since" in out
    assert "Traceback" not in out


HOLD = """
import sys, time
from pathlib import Path
from tasks.lock import refresh_lock
with refresh_lock(sys.argv[1], Path(sys.argv[2]), "testkb", 0):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_lock_of_a_killed_holder_is_free(tmp_path, backend, request):
    from tasks.lock import RefreshRunning, refresh_lock

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    if backend == "postgresql":
        url = request.getfixturevalue("postgres_databases")()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, url, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    with (
        pytest.raises(RefreshRunning, match=rf"pid {holder.pid}, host"),
        refresh_lock(url, tmp_path, "testkb", 0.3),
    ):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    deadline = time.monotonic() + 10
    with refresh_lock(url, tmp_path, "testkb", 10):
        assert time.monotonic() < deadline


def test_recording_a_change_twice_records_it_once(kb):
    """Idempotent without the lock too: the check is repeated inside the write transaction."""
    from sqlalchemy import select

    from tasks.catalog.db import session_scope
    from tasks.catalog.models import DocumentVersion
    from tasks.detect import detect
    from tasks.record import record
    from tasks.runtime import runtime

    plan = detect(str(kb), "docs")
    first = [record(str(kb), "docs", c) for c in plan.changes]
    again = [record(str(kb), "docs", c) for c in plan.changes]
    assert [o.version_id for o in first] == [o.version_id for o in again]
    with session_scope(runtime(kb).sessions) as s:
        assert len(s.scalars(select(DocumentVersion)).all()) == 3


def test_two_writers_of_the_next_version_cannot_both_win(kb):
    from sqlalchemy.exc import IntegrityError

    from tasks.catalog.db import session_scope
    from tasks.catalog.models import DocumentVersion
    from tasks.detect import detect
    from tasks.record import record
    from tasks.runtime import runtime

    plan = detect(str(kb), "docs")
    outcome = record(str(kb), "docs", plan.changes[0])
    with pytest.raises(IntegrityError), session_scope(runtime(kb).sessions) as s:
        s.add(
            DocumentVersion(
                document_id=outcome.document_id, seq=1, source_revision="x", change_kind="modified", path="p"
            )
        )
