"""The CI entry point is a shell script that nothing else runs before CI does: a syntax error in it
(a merge once left an unclosed backquote in its header) fails CI in one second without running a test."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_entry_point_parses_as_bash():
    result = subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_ci_entry_point_ends_by_running_make_test():
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands[-1] == "make test"
