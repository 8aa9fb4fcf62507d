"""One refresh per knowledge base at a time: a lock taken before detection and held to the release.

On PostgreSQL a session-level advisory lock on a connection held open for the refresh; the holder is
named in that connection's ``application_name``, which ``pg_stat_activity`` shows to the waiting process.
On SQLite an exclusive ``flock`` on ``INSTILL_HOME/locks/<kb>.lock``, with the holder written into the
file. Both are released by the operating system or the server when the holder dies, even by SIGKILL, so a
crashed refresh never leaves the knowledge base locked.

In the distributed mode (a Prefect server is configured), the refresh flow also holds one slot of a
Prefect global concurrency limit named after the knowledge base (``instill-refresh-<kb>``, limit 1, the
lease naming the refresh's flow run), so the Prefect UI shows that a refresh holds it and which. The
catalog lock stays the authority: the slot is taken with it held, so a slot still occupied then was
leaked by a killed holder whose lease has not expired yet, and is reset. ``GPU_LIMIT`` is the limit a
worker's flow run holds a slot of while it uses the device (created by ``instill pool-setup``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from tasks.faults import fault_point

log = logging.getLogger(__name__)

POLL_S = 0.2
GPU_LIMIT = "gpu"  # a Prefect global concurrency limit: one slot per device of the pool
SLOT_LEASE_S = 60  # the shortest lease Prefect grants; renewed while held, freed this long after a kill
_HELD: set[str] = set()  # knowledge bases this process holds (the flow re-enters the CLI's lock)


class RefreshRunning(RuntimeError):
    """Another refresh of the knowledge base holds the lock past the wait."""


def holder() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def describe(kb: str, info: dict | None) -> str:
    if not info:
        return f"refresh of {kb} already running"
    who = f"pid {info.get('pid')}, host {info.get('host')}, since {info.get('since')}"
    return f"refresh of {kb} already running ({who})"


@contextmanager
def refresh_lock(catalog_url: str, home: Path, kb: str, wait_s: float) -> Iterator[None]:
    """Hold the knowledge base's refresh lock; raise ``RefreshRunning`` after ``wait_s`` seconds."""
    key = f"{catalog_url}|{kb}"
    if key in _HELD:
        yield
        return
    backend = make_url(catalog_url).get_backend_name()
    cm = _pg_lock(catalog_url, kb, wait_s) if backend == "postgresql" else _file_lock(home, kb, wait_s)
    with cm:
        _HELD.add(key)
        try:
            fault_point("lock")
            yield
        finally:
            _HELD.discard(key)


@contextmanager
def _file_lock(home: Path, kb: str, wait_s: float) -> Iterator[None]:
    folder = home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kb}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RefreshRunning(describe(kb, _read_holder(path))) from None
                time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _read_holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None


def _lock_id(kb: str) -> int:
    """A signed 64-bit advisory-lock key for the knowledge base."""
    return int.from_bytes(hashlib.sha256(f"instill-refresh:{kb}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def _pg_lock(catalog_url: str, kb: str, wait_s: float) -> Iterator[None]:
    import psycopg

    info = holder()
    url = make_url(catalog_url)
    name = f"instill refresh {kb} pid={info['pid']} host={info['host']} since={info['since']}"[:63]
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10, application_name=name)
    lock_id = _lock_id(kb)
    try:
        deadline = time.monotonic() + wait_s
        while not conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_id,)).fetchone()[0]:
            if time.monotonic() >= deadline:
                raise RefreshRunning(describe(kb, _pg_holder(conn, lock_id)))
            time.sleep(POLL_S)
        yield
    finally:
        conn.close()  # ends the session, which releases its advisory locks


def _pg_holder(conn, lock_id: int) -> dict | None:
    # A bigint advisory key is split into classid (high 32 bits) and objid (low 32 bits).
    high, low = (lock_id >> 32) & 0xFFFFFFFF, lock_id & 0xFFFFFFFF
    row = conn.execute(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
        (high, low),
    ).fetchone()
    if not row:
        return None
    fields = dict(part.split("=", 1) for part in row[0].split() if "=" in part)
    return fields or None


def refresh_limit_name(kb: str) -> str:
    """The Prefect global concurrency limit that mirrors the knowledge base's refresh lock."""
    return f"instill-refresh-{kb}"


@contextmanager
def prefect_slot(kb: str, flow_run_id: str | None) -> Iterator[None]:
    """Hold the slot of ``refresh_limit_name(kb)`` (created with limit 1 if missing), with the catalog
    lock already held; the lease names the refresh's flow run."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency.sync import concurrency

    name = refresh_limit_name(kb)
    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run_id)) if flow_run_id else None
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)

    def take(wait_s: float):
        return concurrency(
            name, occupy=1, timeout_seconds=wait_s, strict=True, holder=holder, lease_duration=SLOT_LEASE_S
        )

    with ExitStack() as stack:
        try:
            stack.enter_context(take(2))
        except TimeoutError:  # we hold the catalog lock: the slot's holder is dead, its lease not expired
            log.warning("%s: resetting a slot a killed refresh left occupied", name)
            with get_client(sync_client=True) as client:
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
            stack.enter_context(take(30))
        yield
