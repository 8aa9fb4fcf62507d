"""One refresh per knowledge base at a time: a lock taken before detection and held to the release.

On PostgreSQL a session-level advisory lock on a connection held open for the refresh; the holder is
named in that connection's ``application_name``, which ``pg_stat_activity`` shows to the waiting process.
On SQLite an exclusive ``flock`` on ``INSTILL_HOME/locks/<kb>.lock``, with the holder written into the
file. Both are released by the operating system or the server when the holder dies, even by SIGKILL, so a
crashed refresh never leaves the knowledge base locked.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from tasks.faults import fault_point

POLL_S = 0.2
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
