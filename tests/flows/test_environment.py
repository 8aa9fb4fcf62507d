"""Every error of the environment is one line and a non-zero exit: unreachable catalog, MLflow or S3, a
bad or read-only home, a broken config on every command; a refresh with the registry down fails within
a minute with its work recorded, and the next refresh registers it."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import yaml

from tests.fixtures.kb import instill
from tests.flows.reliability import env_for, make_kb, run, summary


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line_error(code: int, out: str, expected: int = 4) -> str:
    assert code == expected, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    return errors[0]


@pytest.mark.parametrize("command", [("refresh",), ("status",), ("releases",)])
def test_unreachable_catalog(kb, monkeypatch, command):
    monkeypatch.setenv("INSTILL_CATALOG_URL", f"postgresql://bob:pw@127.0.0.1:{_closed_port()}/kb")
    start = time.monotonic()
    code, out = instill(*command, "--config", str(kb))
    line = _one_line_error(code, out)
    assert "catalog" in line and "pw" not in out
    assert time.monotonic() - start < 30


def test_unreachable_mlflow_fails_within_a_minute_and_the_next_run_registers(
    prefect_server, tmp_path, tiny_model_dir
):
    config = make_kb(tmp_path, tiny_model_dir)
    down = env_for(tmp_path, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{_closed_port()}")
    start = time.monotonic()
    code, out = run(config, "--json", str(tmp_path / "down.json"), env=down)
    assert code == 1, out
    assert time.monotonic() - start < 90, "fails within a minute after start-up"
    assert "cannot reach the MLflow registry" in out and "Traceback" not in out
    assert summary(tmp_path / "down.json")["changed"]["added"] == 3
    code, out = run(config, "--json", str(tmp_path / "up.json"), env=env_for(tmp_path))
    assert code == 0, out
    assert len(summary(tmp_path / "up.json")["registered"]) == 3, "what the failed run recorded is registered"


def test_unreachable_s3_is_one_line(kb, monkeypatch):
    body = yaml.safe_load(kb.read_text())
    body["sources"].append(
        {
            "kind": "s3",
            "name": "bucket",
            "bucket": "kb-docs",
            "endpoint_url": f"http://127.0.0.1:{_closed_port()}",
            "retries": 0,
        }
    )
    kb.write_text(yaml.safe_dump(body))
    code, out = instill("refresh", "--config", str(kb))
    assert code != 0 and "Traceback" not in out
    failed = [line for line in out.splitlines() if line.startswith("failed bucket:*")]
    assert len(failed) == 1, out


def test_home_under_a_regular_file(kb, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / "file" / "home"))
    for command in (("refresh",), ("status",)):
        line = _one_line_error(*instill(*command, "--config", str(kb)))
        assert "INSTILL_HOME" in line and "a file is in the way" in line


def test_read_only_home(kb, monkeypatch, tmp_path):
    home = tmp_path / "ro"
    home.mkdir()
    monkeypatch.setenv("INSTILL_HOME", str(home))
    if os.geteuid() == 0:  # root writes anywhere: make the home look read-only to the check
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p) == home else real(p, m, **k))
    else:
        home.chmod(0o555)
    line = _one_line_error(*instill("status", "--config", str(kb)))
    assert "not writable" in line


BROKEN = "name: kb\nsources: [ {kind: local\n"


@pytest.mark.parametrize(
    "args",
    [
        ("refresh",),
        ("status",),
        ("releases",),
        ("promote", "docs:a.md"),
        ("rollback", "docs:a.md"),
        ("audit", "adapter", "kb-docs-1@production"),
        ("audit", "doc", "docs:a.md"),
        ("generate", "README.md", "--out", "x"),
    ],
)
def test_a_broken_config_is_one_line_on_every_command(tmp_path, monkeypatch, args):
    config = tmp_path / "instill.yaml"
    config.write_text(BROKEN)
    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    from tasks.runtime import forget_runtimes

    forget_runtimes()
    cmd = list(args)
    at = 2 if cmd[0] == "audit" else 1
    cmd[at:at] = ["--config", str(config)]
    line = _one_line_error(*instill(*cmd), expected=2)
    assert "not valid YAML" in line


def test_unreachable_s3_store_stops_the_refresh_in_one_line(kb, monkeypatch):
    body = yaml.safe_load(kb.read_text())
    body["store"] = {
        "kind": "s3",
        "bucket": "kb-store",
        "endpoint_url": f"http://127.0.0.1:{_closed_port()}",
        "access_key_id_env": "STORE_KEY",
        "secret_access_key_env": "STORE_SECRET",
        "retries": 0,
    }
    kb.write_text(yaml.safe_dump(body))
    monkeypatch.setenv("STORE_KEY", "AKIASTORE")
    monkeypatch.setenv("STORE_SECRET", "StorePlant99")
    code, out = instill("refresh", "--config", str(kb))
    line = _one_line_error(code, out)
    assert line.startswith("error: artifact store s3://kb-store at http://127.0.0.1:")
    assert "StorePlant99" not in out
    monkeypatch.delenv("STORE_SECRET")
    line = _one_line_error(*instill("status", "--config", str(kb)))
    assert "environment variable STORE_SECRET is not set" in line
