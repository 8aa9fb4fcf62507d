"""A refresh of the example knowledge base with the S3 store against the process stack (infra/stack.py):
PostgreSQL catalog, MLflow server with S3 artifacts, Prefect server. The refresh runs in a process of its
own that knows only instill.yaml and the stack's environment; then a fresh process that knows only an
adapter's s3:// URI loads it with PEFT.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import yaml
from sqlalchemy import select

from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter
from tasks.runtime import forget_runtimes, runtime
from tasks.store_s3 import MANIFEST
from tests.fixtures.stack import ProcessStack, stack_environ

REPO = Path(__file__).resolve().parents[2]
LOAD_BY_URI = """
import sys
from peft import PeftModel
from transformers import AutoModelForCausalLM
from tasks.store_s3 import fetch_folder

folder = fetch_folder(sys.argv[1], sys.argv[2])
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[3]), folder)
print(sum(1 for name, _ in model.named_parameters() if "lora_A" in name))
"""


def _keys(stack: ProcessStack, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack.s3_url, region_name="us-east-1",
                      aws_access_key_id=stack.env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=stack.env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _assert_secret_nowhere(stack: ProcessStack, home: str, output: str) -> None:
    """The S3 secret is in no database of the stack (catalog, MLflow, Prefect: parameters, logs, states),
    no file of the home and not in the refresh's output."""
    secret = stack.env["INSTILL_S3_SECRET_ACCESS_KEY"]
    assert secret not in output
    prefix = json.loads((stack.state_dir / "stack.json").read_text())["db_prefix"]
    for db in ("instill_catalog", "mlflow", "prefect"):
        dump = subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", f"{prefix}{db}"],
                              capture_output=True, timeout=300, check=True).stdout  # fmt: skip
        assert len(dump) > 10_000 and secret.encode() not in dump, db
    for path in Path(home).rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path


def _example_kb(tmp_path: Path, model: Path, stack: ProcessStack, monkeypatch) -> tuple[Path, str]:
    """examples/instill.yaml (its five documents: Markdown, text, HTML, PDF, DOCX) under a name of its own,
    with the stack's S3 store, on the tiny model without gates (SmolLM2 takes minutes per document here)."""
    config = yaml.safe_load((REPO / "examples" / "instill.yaml").read_text())
    name = f"s3kb{uuid.uuid4().hex[:8]}"
    config["name"] = name
    config["sources"][0]["path"] = str(REPO / "examples" / "kb")
    config["generator"] = {"name": "cd", "base_model": str(model), "options": {"steps": 2}}
    config["gates"] = {"enabled": False}
    config["store"] = stack.store | {"prefix": f"store/{name}"}
    path = tmp_path / "instill.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    forget_runtimes()
    return path, name


def test_refresh_puts_adapters_in_s3_and_registers_them_with_s3_artifacts(
    process_stack: ProcessStack, tmp_path: Path, tiny_model_dir: Path, monkeypatch
) -> None:
    kb, name = _example_kb(tmp_path, tiny_model_dir, process_stack, monkeypatch)
    out = tmp_path / "summary.json"
    env = stack_environ(process_stack)
    argv = [sys.executable, "-m", "flows.cli", "refresh", "--config", str(kb), "--json", str(out)]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(out.read_text())
    assert summary["generated"] == 5 and len(summary["registered"]) == 5 and summary["failed"] == []

    manifests = [k for k in _keys(process_stack, f"store/{name}/adapters/") if k.endswith(MANIFEST)]
    assert len(manifests) == 5
    with session_scope(runtime(kb).sessions) as s:
        adapters = s.scalars(select(Adapter)).all()
        located = sorted(runtime(kb).store.locate(a.store_uri) for a in adapters)
    assert sorted(f"s3://{process_stack.bucket}/{k.rsplit('/', 1)[0]}" for k in manifests) == located
    assert not (Path(env["INSTILL_HOME"]) / "store").exists(), "nothing in the local store"

    from mlflow import MlflowClient

    client = MlflowClient(process_stack.mlflow_url)
    for registered in summary["registered"]:
        version = client.get_model_version(registered["model"], registered["version"])
        assert version.source.startswith("mlflow-artifacts:/")
        run_keys = _keys(process_stack, "mlflow/")
        assert any(f"/{version.run_id}/artifacts/adapter/adapter_model.safetensors" in k for k in run_keys)

    _assert_secret_nowhere(process_stack, env["INSTILL_HOME"], done.stdout + done.stderr + out.read_text())

    fresh_env = {k: v for k, v in env.items() if not k.startswith(("INSTILL_", "MLFLOW_", "PREFECT_API"))}
    argv = [sys.executable, "-c", LOAD_BY_URI, located[0], str(tmp_path / "fetched"), str(tiny_model_dir)]
    loaded = subprocess.run(argv, cwd=REPO, env=fresh_env, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert int(loaded.stdout.split()[-1]) > 0
    forget_runtimes()
