"""The handles a refresh needs (catalog sessions, store, registry, generator), built once per process.

Tasks receive the config path and ids, never these objects: ``runtime(config)`` hands every task in the
same process the same handles, so the base model is loaded once per run and nothing heavy crosses a task
boundary.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from tasks.catalog import db
from tasks.settings import KnowledgeBase, Settings, apply_runtime_env, load_knowledge_base
from tasks.store import LocalStore

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    kb: KnowledgeBase
    sessions: sessionmaker[Session]
    store: LocalStore
    _registry: Any = None
    _generator: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def registry(self):  # -> tasks.registry.Registry (imported lazily: mlflow costs seconds)
        if self._registry is None:
            from tasks.registry import Registry

            self._registry = Registry(self.settings.tracking_uri, self.settings.artifact_root, self.kb.name)
        return self._registry

    def generator(self):  # -> hypernet.generators.Generator
        with self._lock:
            if self._generator is None:
                from tasks.generate import build_generator

                self._generator = build_generator(self.settings, self.kb.generator)
            return self._generator


_RUNTIMES: dict[Path, Runtime] = {}


def runtime(config: str | Path) -> Runtime:
    path = Path(config).resolve()
    if path not in _RUNTIMES:
        settings = Settings(config=path)
        apply_runtime_env(settings.home)
        kb = load_knowledge_base(path)
        prepare_catalog(settings.catalog)
        _RUNTIMES[path] = Runtime(
            settings, kb, db.session_factory(settings.catalog), LocalStore(settings.store_root)
        )
    return _RUNTIMES[path]


class CatalogNotReady(RuntimeError):
    """A server catalog that is behind the code's migrations."""


def prepare_catalog(url: str) -> None:
    """Upgrade an embedded SQLite catalog by itself; a server catalog must be upgraded explicitly."""
    if url.startswith("sqlite"):
        db.upgrade(url)
        return
    from tasks.catalog.db import current_revision, head_revision

    if current_revision(url) != head_revision():
        raise CatalogNotReady(
            f"the catalog at {_redact(url)} is not at the latest migration: run `instill db upgrade`"
        )


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def forget_runtimes() -> None:
    """Drop cached handles (tests that switch configs or homes within one process)."""
    _RUNTIMES.clear()
