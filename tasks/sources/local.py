"""Local folder source: the files under one directory, versioned by the sha256 of their bytes."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, ClassVar

from tasks.sources.base import (
    Change,
    ChangeSet,
    DocumentFetchError,
    KnownDocument,
    Source,
    SourceError,
    StaleRevisionError,
    TooLargeError,
    compare_with_known,
    is_selected,
    sort_changes,
)

if TYPE_CHECKING:
    from tasks.settings import LocalSourceConfig, Settings


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class LocalFolderSource(Source):
    """The documents under ``root``; keys are POSIX paths relative to it, revisions sha256 of the bytes.

    There is no cursor: every run hashes the files and compares them with the catalog. Hidden
    directories are skipped, and so are symlinked directories (no cycles, no duplicates) and file
    symlinks that point outside ``root``.
    """

    name: str
    root: Path
    include: list[str] | None = None
    max_bytes: int = 50 * 2**20
    kind: ClassVar[str] = "local"

    @classmethod
    def from_config(cls, cfg: LocalSourceConfig, settings: Settings) -> LocalFolderSource:
        return cls(cfg.name, cfg.path, include=cfg.include, max_bytes=cfg.max_bytes)

    def changes(self, cursor: None, known: Mapping[str, KnownDocument]) -> ChangeSet:
        root = self._checked_root()
        current, unreadable, warnings = self._scan(root)
        keep = {k for k in known if any(k == u or k.startswith(u + "/") for u in unreadable)}
        changes = compare_with_known(current, known, lambda d: d.raw_sha256 or d.revision, keep)
        return ChangeSet(sort_changes(changes), cursor=None, warnings=warnings)

    def fetch(self, change: Change) -> bytes:
        path = self._document_path(change.key)
        try:
            size = path.stat().st_size
            if size > self.max_bytes:  # refused before a byte is read
                raise TooLargeError(self.name, change.key, size, self.max_bytes)
            data = path.read_bytes()
        except OSError as err:
            raise DocumentFetchError(self.name, change.key, err.strerror or str(err)) from err
        actual = hashlib.sha256(data).hexdigest()
        if change.revision is not None and actual != change.revision:
            reason = f"edited since it was listed (sha256 {actual}, expected {change.revision})"
            raise StaleRevisionError(self.name, change.key, reason)
        return data

    def _checked_root(self) -> Path:
        root = Path(self.root)
        if not root.is_dir():
            reason = "is not a directory" if root.exists() else "does not exist"
            raise SourceError(f"local source {self.name!r}: folder {str(root)!r} {reason}")
        return root.resolve()

    def _document_path(self, key: str) -> Path:
        root = self._checked_root()
        path = root / key
        # A key comes back from the catalog; never let it name a file outside the folder.
        if not os.path.realpath(path).startswith(str(root) + os.sep):
            raise DocumentFetchError(self.name, key, f"not inside the folder {str(root)!r}")
        return path

    def _scan(self, root: Path) -> tuple[dict[str, str], list[str], list[str]]:
        """Hash every document: (path -> sha256, unreadable relative paths, warnings)."""
        current: dict[str, str] = {}
        unreadable: list[str] = []

        def on_error(err: OSError) -> None:
            unreadable.append(Path(err.filename).relative_to(root).as_posix())

        for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
            for filename in filenames:
                rel = str(rel_dir / filename) if str(rel_dir) != "." else filename
                if not is_selected(rel, self.include):
                    continue
                full = Path(dirpath, filename)
                try:
                    if self._is_regular_inside(full, root):
                        current[rel] = sha256_file(full)
                except FileNotFoundError:
                    pass  # a dangling link, or deleted while we walked: absent
                except OSError:
                    unreadable.append(rel)
        warnings = [f"local source {self.name!r}: cannot read {p!r}; left as it was" for p in unreadable]
        return current, unreadable, warnings

    @staticmethod
    def _is_regular_inside(path: Path, root: Path) -> bool:
        if path.is_symlink() and not os.path.realpath(path).startswith(str(root) + os.sep):
            return False
        # Sockets and FIFOs would block the read.
        return stat.S_ISREG(path.stat().st_mode)
