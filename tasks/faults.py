"""Fault injection: ``INSTILL_FAULT=POINT[:COUNT]`` makes the process SIGKILL itself at a named point.

The crash tests (tests/flows/test_crash_points.py) kill a refresh at every point below, rerun it and check
that nothing was lost or doubled. ``COUNT`` (default 1) picks the COUNT-th time the point is reached in
the process. Unset (always, outside tests), ``fault_point`` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "INSTILL_FAULT"

# Every point a refresh passes, in the order a first refresh reaches them.
POINTS = (
    "catalog-setup",  # between two catalog migrations (first-time setup)
    "lock",  # the knowledge-base lock taken, nothing done yet
    "detect",  # a refresh_runs row opened
    "record",  # before a document is fetched
    "record-write",  # bytes stored, the catalog not yet written
    "sweep",  # leftovers read
    "generate",  # adapter folder stored, no adapters row yet
    "gate",  # QA results written, verdict not yet
    "mlflow-setup",  # the MLflow database being created (first-time setup)
    "register-run",  # MLflow run created, no model version yet
    "register-version",  # MLflow version created, the catalog not yet told
    "register-alias",  # candidate alias set, production not yet
    "retire",  # a deleted document's aliases being removed
    "finish",  # before a source's run is closed
    "release",  # the release's MLflow run created, no version yet
)

_hits: Counter[str] = Counter()


def fault_point(name: str) -> None:
    """SIGKILL this process when ``INSTILL_FAULT`` names this point (at its COUNT-th hit)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
