"""The handles a refresh needs (settings, catalog, store, registry, generator), built once per process.

Tasks receive the config path and ids, never these objects: ``runtime(config)`` hands every task in the
same process the same handles, so the base model is loaded once per run and nothing heavy crosses a task
boundary. This module is also the one place that builds a generator (``build_generator``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from tasks.catalog import db
from tasks.settings import (
    DocumentKind,
    GeneratorConfig,
    KnowledgeBase,
    S3StoreConfig,
    Settings,
    SourceConfig,
    StoreConfig,
    apply_runtime_env,
    load_knowledge_base,
)
from tasks.store import ArtifactStore, LocalStore

if TYPE_CHECKING:  # mlflow and torch cost seconds to import: both load on first use
    from hypernet.generators import Generator
    from tasks.registry import Registry

log = logging.getLogger(__name__)


def load_base(settings: Settings, spec: str, *, device: str | None = None, threads: int | None = None):
    """The base model ``spec`` (an alias or a local HF folder) from the settings' model cache; ``threads``
    (default: the settings') sets torch's CPU threads first."""
    import torch

    from hypernet.base_model import load_base_model

    threads = settings.threads if threads is None else threads
    if threads > 0:
        torch.set_num_threads(threads)
    return load_base_model(spec, settings.models_dir, device=device or settings.device)


def build_generator(settings: Settings, cfg: GeneratorConfig) -> Generator:
    """Load the base model once and wrap it in the configured generator."""
    from hypernet.generators import make_generator

    return make_generator(cfg.name, load_base(settings, cfg.base_model), dict(cfg.options))


@dataclass
class Runtime:
    settings: Settings
    kb: KnowledgeBase
    sessions: sessionmaker[Session]
    store: ArtifactStore
    _registry: Registry | None = None
    _generators: dict[DocumentKind, Generator] = field(default_factory=dict)
    _base: object | None = None  # the base model, shared by the knowledge and instruction generators
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from tasks.registry import Registry

            self._registry = Registry(self.settings.tracking_uri, self.settings.artifact_root, self.kb.name)
        return self._registry

    def generator_config(self, kind: DocumentKind = DocumentKind.KNOWLEDGE) -> GeneratorConfig:
        """The configured generator for knowledge documents; Text-to-LoRA for instruction documents."""
        if kind is DocumentKind.INSTRUCTION:
            return self.kb.instructions.generator(self.kb.generator.base_model)
        return self.kb.generator

    def generator(self, kind: DocumentKind = DocumentKind.KNOWLEDGE) -> Generator:
        """The generator for documents of ``kind``, built once per process over one loaded base model."""
        from hypernet.generators import make_generator

        with self._lock:
            if kind not in self._generators:
                cfg = self.generator_config(kind)
                if self._base is None:
                    self._base = load_base(self.settings, cfg.base_model)
                self._generators[kind] = make_generator(cfg.name, self._base, dict(cfg.options))
            return self._generators[kind]

    @property
    def base_loaded(self) -> bool:
        return self._base is not None

    def known_fingerprint(self, kind: DocumentKind = DocumentKind.KNOWLEDGE) -> str | None:
        """The generator's fingerprint for ``kind`` as last computed in this home, without loading the model.

        Keyed by the generator config and the size and mtime of every file of its base model and
        checkpoint, so a changed model is loaded and fingerprinted again."""
        return self._fingerprints().get(self._generator_key(self.generator_config(kind)))

    def remember_fingerprint(self, fingerprint: str, kind: DocumentKind = DocumentKind.KNOWLEDGE) -> None:
        # Both kinds' entries are kept: a refresh that fingerprints the instruction generator must not
        # make the next no-op refresh load the model again for the knowledge one.
        cache = self._fingerprints() | {self._generator_key(self.generator_config(kind)): fingerprint}
        try:
            self._fingerprint_file.write_text(json.dumps(dict(list(cache.items())[-8:])), encoding="utf-8")
        except OSError as exc:  # a cache: without it the next run loads the model to fingerprint it
            log.debug("cannot write %s: %s", self._fingerprint_file, exc)

    def _fingerprints(self) -> dict[str, str]:
        try:
            cache = json.loads(self._fingerprint_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return cache if isinstance(cache, dict) else {}

    @property
    def _fingerprint_file(self) -> Path:
        return self.settings.home.resolve() / "generator-fingerprint.json"

    def _generator_key(self, cfg: GeneratorConfig) -> str:
        stats = []
        candidates = [Path(cfg.base_model), self.settings.models_dir / cfg.base_model]
        candidates += [Path(str(v)) for v in cfg.options.values() if isinstance(v, str) and "/" in v]
        for folder in candidates:
            files = sorted(folder.rglob("*")) if folder.is_dir() else [folder] if folder.is_file() else []
            for f in files:
                st = f.stat()
                stats.append((str(f), st.st_size, st.st_mtime_ns))
        payload = {
            "config": cfg.model_dump(mode="json"),
            "models": str(self.settings.models_dir),
            "files": stats,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def source_config(self, name: str) -> SourceConfig:
        """The configuration of the source called ``name``."""
        return next(s for s in self.kb.sources if s.name == name)


_RUNTIMES: dict[Path, Runtime] = {}


def runtime(config: str | Path) -> Runtime:
    path = Path(config).resolve()
    if path not in _RUNTIMES:
        settings = Settings(config=path)
        apply_runtime_env(settings.home)
        kb = load_knowledge_base(path)
        prepare_catalog(settings.catalog)
        _RUNTIMES[path] = Runtime(
            settings, kb, db.session_factory(settings.catalog), open_store(settings, kb.store)
        )
    return _RUNTIMES[path]


def open_store(settings: Settings, cfg: StoreConfig) -> ArtifactStore:
    """The configured artifact store: the local folder under the home, or an S3 bucket."""
    if not isinstance(cfg, S3StoreConfig):
        return LocalStore(settings.store_root)
    import os

    from tasks.errors import StoreUnavailable
    from tasks.store_s3 import S3Store, make_client

    pair = None
    if cfg.access_key_id_env and cfg.secret_access_key_env:
        missing = [n for n in (cfg.access_key_id_env, cfg.secret_access_key_env) if not os.environ.get(n)]
        if missing:
            raise StoreUnavailable(f"artifact store {cfg.uri}: environment variable {missing[0]} is not set")
        pair = (os.environ[cfg.access_key_id_env], os.environ[cfg.secret_access_key_env])
    client = make_client(cfg.endpoint_url, cfg.region, pair, cfg.retries)
    cache = cfg.cache_dir or settings.home.resolve() / "store-cache" / cfg.bucket / (cfg.prefix or "_")
    return S3Store(client, cfg.bucket, cfg.prefix, cache, where=cfg.uri)


class CatalogNotReady(RuntimeError):
    """A server catalog that is behind the code's migrations."""


def prepare_catalog(url: str) -> None:
    """Upgrade an embedded SQLite catalog by itself; a server catalog must be upgraded explicitly."""
    if url.startswith("sqlite"):
        if db.current_revision(url) != db.head_revision():  # the check is cheap; an upgrade run is not
            db.upgrade(url)
        return
    if db.current_revision(url) != db.head_revision():
        shown = make_url(url).render_as_string(hide_password=True)
        raise CatalogNotReady(
            f"the catalog at {shown} is not at the latest migration: run `instill db upgrade`"
        )


def forget_runtimes() -> None:
    """Drop cached handles (tests that switch configs or homes within one process)."""
    _RUNTIMES.clear()
