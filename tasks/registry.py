"""The MLflow model registry as instill uses it: one registered model per document, aliases for releases.

Adapters are logged as plain artifacts, not through a model flavour, so the registered files are the PEFT
folder exactly as stored; versions are registered from the run's artifact URI. Registration is
idempotent: a version tagged with the same adapter sha256 is found and reused, so a crash between the
registry and the catalog never leaves a duplicate. MLflow keeps no history of alias moves; callers record
each move in the catalog's ``alias_events``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

ADAPTER_ARTIFACT_PATH = "adapter"
SHA_TAG = "adapter_sha256"


@dataclass(frozen=True)
class RegisteredVersion:
    model: str
    version: str
    run_id: str
    reused: bool  # True when an existing version with the same adapter sha256 was found


@dataclass
class AdapterRecord:
    """What goes into the MLflow run and the version's tags for one adapter."""

    model: str
    adapter_dir: Path
    adapter_sha256: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    description: str = ""


class Registry:
    def __init__(self, tracking_uri: str, artifact_root: Path, experiment: str) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.artifact_root = artifact_root
        self.experiment = experiment
        self._experiment_id: str | None = None

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                self.artifact_root.mkdir(parents=True, exist_ok=True)
                location = (self.artifact_root / self.experiment).as_uri()
                self._experiment_id = self.client.create_experiment(self.experiment, location)
            else:
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def find_version(self, model: str, adapter_sha256: str) -> RegisteredVersion | None:
        """The registered version of ``model`` that holds this exact adapter, if any."""
        if not self._model_exists(model):
            return None
        for mv in self.client.search_model_versions(f"name = '{model}'"):
            if mv.tags.get(SHA_TAG) == adapter_sha256:
                return RegisteredVersion(model, str(mv.version), mv.run_id or "", reused=True)
        return None

    def register(self, record: AdapterRecord) -> RegisteredVersion:
        existing = self.find_version(record.model, record.adapter_sha256)
        if existing is not None:
            return existing
        run = self.client.create_run(
            self.experiment_id(), tags={SHA_TAG: record.adapter_sha256, **record.tags}, run_name=record.model
        )
        run_id = run.info.run_id
        try:
            for key, value in record.params.items():
                self.client.log_param(run_id, key, value)
            for key, value in record.metrics.items():
                self.client.log_metric(run_id, key, float(value))
            self.client.log_artifacts(run_id, str(record.adapter_dir), ADAPTER_ARTIFACT_PATH)
        except Exception:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        if not self._model_exists(record.model):
            self.client.create_registered_model(record.model, description=record.description)
        source = f"{run.info.artifact_uri}/{ADAPTER_ARTIFACT_PATH}"
        mv = self.client.create_model_version(
            record.model, source=source, run_id=run_id, tags={SHA_TAG: record.adapter_sha256, **record.tags}
        )
        return RegisteredVersion(record.model, str(mv.version), run_id, reused=False)

    def register_file_version(self, model: str, folder: Path, tags: dict[str, str]) -> str:
        """A new version of ``model`` holding ``folder``'s files (release manifests); returns the version."""
        run = self.client.create_run(self.experiment_id(), tags=tags, run_name=model)
        self.client.log_artifacts(run.info.run_id, str(folder), ADAPTER_ARTIFACT_PATH)
        self.client.set_terminated(run.info.run_id, "FINISHED")
        if not self._model_exists(model):
            self.client.create_registered_model(model)
        source = f"{run.info.artifact_uri}/{ADAPTER_ARTIFACT_PATH}"
        return str(
            self.client.create_model_version(model, source=source, run_id=run.info.run_id, tags=tags).version
        )

    def versions(self, model: str) -> list[str]:
        if not self._model_exists(model):
            return []
        return [str(mv.version) for mv in self.client.search_model_versions(f"name = '{model}'")]

    def download_version(self, model: str, version: str) -> Path:
        """The files of one version, fetched into a temporary folder."""
        import tempfile

        mv = self.client.get_model_version(model, str(version))
        target = Path(tempfile.mkdtemp(prefix="instill-mv-"))
        return Path(self.client.download_artifacts(mv.run_id, ADAPTER_ARTIFACT_PATH, str(target)))

    def alias(self, model: str, alias: str) -> str | None:
        """The version an alias points at, or None."""
        try:
            return str(self.client.get_model_version_by_alias(model, alias).version)
        except MlflowException:
            return None

    def set_alias(self, model: str, alias: str, version: str) -> str | None:
        """Point ``alias`` at ``version``; returns the version it pointed at before."""
        before = self.alias(model, alias)
        if before != str(version):
            self.client.set_registered_model_alias(model, alias, str(version))
        return before

    def delete_alias(self, model: str, alias: str) -> str | None:
        before = self.alias(model, alias)
        if before is not None:
            self.client.delete_registered_model_alias(model, alias)
        return before

    def _model_exists(self, model: str) -> bool:
        try:
            self.client.get_registered_model(model)
        except MlflowException:
            return False
        return True
