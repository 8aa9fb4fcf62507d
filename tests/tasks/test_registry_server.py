"""The MLflow registry wrapper against the process stack's tracking server (PostgreSQL backend, artifacts
proxied to S3): registered files land in the bucket, never on the client's disk, and come back intact."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3

from tasks.registry import AdapterRecord, Registry
from tests.fixtures.stack import ProcessStack


def _bucket_keys(stack: ProcessStack, prefix: str) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=stack.s3_url, region_name="us-east-1",
                      aws_access_key_id=stack.env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=stack.env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
    return {o["Key"] for o in s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix).get("Contents", [])}


def test_versions_and_releases_are_stored_in_s3_through_the_server(process_stack, tmp_path: Path) -> None:
    local_root = tmp_path / "never-written"
    registry = Registry(process_stack.mlflow_url, local_root, f"kb-{uuid.uuid4().hex[:8]}")
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(b"\x01" * 4096)
    version = registry.register(AdapterRecord(f"{registry.experiment}-doc", folder, "d" * 64))
    assert registry.register(AdapterRecord(f"{registry.experiment}-doc", folder, "d" * 64)).reused

    experiment = registry.client.get_experiment(registry.experiment_id())
    assert experiment.artifact_location.startswith("mlflow-artifacts:/")
    keys = _bucket_keys(process_stack, f"mlflow/{registry.experiment_id()}/{version.run_id}/")
    assert {k.rsplit("/", 1)[1] for k in keys} == {"adapter_config.json", "adapter_model.safetensors"}
    back = registry.download_version(version.model, version.version)
    assert (back / "adapter_model.safetensors").read_bytes() == b"\x01" * 4096

    manifest = tmp_path / "release"
    manifest.mkdir()
    (manifest / "release.json").write_text("{}")
    release = registry.register_file_version(f"{registry.experiment}-releases", manifest, {"kind": "release"})
    assert release == "1"
    assert not local_root.exists(), "a tracking server keeps artifacts; nothing is written locally"
