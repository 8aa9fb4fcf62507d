"""Test-session set-up: offline, telemetry-free, a throwaway Prefect home; shared server fixtures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Before Prefect, MLflow, transformers or unstructured import anywhere in the session.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="instill-prefect-"))
os.environ.setdefault("INSTILL_MODEL_CACHE", str(REPO / ".instill" / "models"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
from tasks.settings import RUNTIME_ENV  # noqa: E402

for _key, _value in RUNTIME_ENV.items():
    os.environ.setdefault(_key, _value)

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.git",
    "tests.fixtures.models",
    "tests.fixtures.prefect",
    "tests.fixtures.kb",
    "tests.fixtures.s3",
    "tests.fixtures.mediawiki",
    "tests.fixtures.workers",
    "tests.fixtures.stack",
]
