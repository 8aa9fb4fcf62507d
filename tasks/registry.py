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

from tasks.errors import RegistryUnavailable, first_line
from tasks.faults import fault_point
from tasks.sources.base import redact

log = logging.getLogger(__name__)

_UNREACHABLE = (
    "Max retries exceeded",
    "Connection refused",
    "Failed to establish a new connection",
    "timed out",
    "Name or service not known",
    "unable to open database file",
    "attempt to write a readonly database",
    "could not connect",
)


def _unreachable(exc: Exception) -> bool:
    import requests
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, (requests.ConnectionError, requests.Timeout, OperationalError)):
        return True
    return any(marker in str(exc) for marker in _UNREACHABLE)


class _GuardedClient:
    """The MLflow client, failing fast once the registry has been found unreachable (a circuit breaker):
    a refresh with the registry down ends within the HTTP retry budget of one call, not one per adapter."""

    def __init__(self, client: MlflowClient, where: str) -> None:
        self._client = client
        self._where = where
        self.down: str | None = None

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if self.down:
                raise RegistryUnavailable(self.down)
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                if isinstance(exc, RegistryUnavailable) or not _unreachable(exc):
                    raise
                self.down = f"cannot reach the MLflow registry at {self._where}: {first_line(exc, 200)}"
                raise RegistryUnavailable(self.down) from None

        return call


def prepare_sqlite_store(tracking_uri: str) -> None:
    """Create an embedded MLflow database so that a crash during its first-time setup cannot break it.

    MLflow creates its tables with a long run of migrations; killed half-way, the file is left
    half-migrated and every later start fails (``duplicate column name``). So a new database is built in
    a temporary file and renamed into place once complete; an existing one that cannot be opened and
    holds no runs and no registered models (a half-built database from an older instill) is set aside
    and rebuilt.
    """
    import os
    import sqlite3

    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri[len("sqlite:///") :])
    if path.exists():
        if _opens(tracking_uri):
            return
        if _holds_anything(path):
            raise RegistryUnavailable(
                f"the MLflow database {path} is not at MLflow's current schema and holds runs: "
                f"back it up, then run `mlflow db upgrade sqlite:///{path}`"
            )
        aside = path.with_name(f"{path.name}.broken-{os.getpid()}")
        log.warning("the MLflow database %s was left half-built; set aside as %s and rebuilt", path, aside)
        os.replace(path, aside)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.init-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    _create_store(f"sqlite:///{tmp}")
    fault_point("mlflow-setup")
    with sqlite3.connect(tmp) as conn:  # nothing left in a journal: the renamed file is complete
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.replace(tmp, path)


def _create_store(uri: str) -> None:
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(uri, str(Path(uri[len("sqlite:///") :]).parent / "mlartifacts"))
    RegistryStore(uri)
    store.engine.dispose()


def _opens(uri: str) -> bool:
    """True when the MLflow database is at MLflow's newest migration (read with sqlite3: opening it with
    MLflow would keep a connection to the file that is about to be set aside)."""
    import sqlite3

    import mlflow.store.db_migrations as migrations
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    try:
        with sqlite3.connect(uri[len("sqlite:///") :]) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError:
        return False
    return row is not None and row[0] == head


def _holds_anything(path: Path) -> bool:
    import sqlite3

    try:
        with sqlite3.connect(path) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            return any(
                conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # noqa: S608 - fixed names
                for t in ("runs", "registered_models")
                if t in tables
            )
    except sqlite3.DatabaseError:
        return True  # not even SQLite: leave it to a person


def is_tracking_server(tracking_uri: str) -> bool:
    """An MLflow tracking server (``http(s)://``), which stores artifacts where it is configured to."""
    return tracking_uri.startswith(("http://", "https://"))


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
        prepare_sqlite_store(tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.client = _GuardedClient(client, redact(tracking_uri))
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.experiment = experiment
        self._experiment_id: str | None = None

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                self._experiment_id = self.client.create_experiment(self.experiment, self._location())
            else:
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def _location(self) -> str | None:
        """Where a new experiment keeps its artifacts: a tracking server chooses (``mlflow-artifacts:``,
        proxied to its ``--artifacts-destination``, e.g. S3), an embedded database uses the local folder."""
        if is_tracking_server(self.tracking_uri):
            return None
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        return (self.artifact_root / self.experiment).as_uri()

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
        fault_point("register-run")
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
        fault_point("register-version")
        return RegisteredVersion(record.model, str(mv.version), run_id, reused=False)

    def register_file_version(self, model: str, folder: Path, tags: dict[str, str]) -> str:
        """A new version of ``model`` holding ``folder``'s files (release manifests); returns the version."""
        run = self.client.create_run(self.experiment_id(), tags=tags, run_name=model)
        fault_point("release")
        self.client.log_artifacts(run.info.run_id, str(folder), ADAPTER_ARTIFACT_PATH)
        self.client.set_terminated(run.info.run_id, "FINISHED")
        if not self._model_exists(model):
            self.client.create_registered_model(model)
        source = f"{run.info.artifact_uri}/{ADAPTER_ARTIFACT_PATH}"
        return str(
            self.client.create_model_version(model, source=source, run_id=run.info.run_id, tags=tags).version
        )

    def kill_running_runs(self) -> int:
        """Mark the experiment's runs left RUNNING by a process that died as KILLED; returns how many."""
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            return 0
        stuck = self.client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'")
        for run in stuck:
            self.client.set_terminated(run.info.run_id, "KILLED")
        return len(stuck)

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
