"""Local folder source: the documents are the files under one directory, versioned by sha256 of their bytes.

Also holds the helpers the file-tree sources share (path selection, the full comparison with the catalog,
rename pairing, change ordering) and the per-document fetch errors.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

from tasks.sources.base import (
    Change,
    ChangeKind,
    ChangeSet,
    DocumentFetchError,
    KnownDocument,
    SourceError,
    is_document,
)

_KIND_ORDER = {kind: i for i, kind in enumerate(ChangeKind)}


class StaleRevisionError(DocumentFetchError):
    """The document's bytes changed between ``changes()`` and ``fetch()``."""


@functools.lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob matched against a whole POSIX path.

    ``*`` and ``?`` stay inside one path component, ``**/`` matches zero or more directories and a
    trailing ``**`` anything below. Brackets are literal.
    """
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def is_selected(path: str, include: Iterable[str] | None = None, prefix: str = "") -> bool:
    """Whether a POSIX path is a document of a source with these ``include`` globs and ``prefix`` folder.

    Paths with a hidden component (``.git/``, ``.github/``, editor ``.#x.md`` files) never are: both
    sources skip them so that a folder and its Git repository hold the same documents.
    """
    if prefix and not path.startswith(prefix.rstrip("/") + "/"):
        return False
    if any(part.startswith(".") for part in path.split("/")) or not is_document(path):
        return False
    patterns = list(include or ())
    return not patterns or any(glob_regex(p).match(path) for p in patterns)


def pair_renames(
    added: Mapping[str, str], deleted: Mapping[str, str]
) -> tuple[list[Change], dict[str, str], dict[str, str]]:
    """Pair added paths with deleted paths of the same content id into renames.

    ``added`` maps a new path to its revision, ``deleted`` an old path to its content id; an added
    revision equal to a deleted content id is a rename. Several candidates pair one-to-one in sorted
    path order, so reruns give the same answer. Returns (renames, unpaired added, unpaired deleted).
    """
    olds_by_id: dict[str, list[str]] = defaultdict(list)
    for old in sorted(deleted):
        olds_by_id[deleted[old]].append(old)
    renames: list[Change] = []
    for new in sorted(added):
        olds = olds_by_id.get(added[new])
        if olds:
            renames.append(Change(ChangeKind.RENAMED, new, added[new], old_key=olds.pop(0)))
    paired_new = {c.key for c in renames}
    paired_old = {c.old_key for c in renames}
    return (
        renames,
        {p: r for p, r in added.items() if p not in paired_new},
        {p: r for p, r in deleted.items() if p not in paired_old},
    )


def compare_with_known(
    current: Mapping[str, str],
    known: Mapping[str, KnownDocument],
    content_id: Callable[[KnownDocument], str],
    keep: Collection[str] = (),
) -> list[Change]:
    """Every change that turns ``known`` into ``current`` (path -> revision), renames paired by content id.

    Known paths in ``keep`` are left alone even when absent from ``current`` (they could not be read).
    """
    modified = [
        Change(ChangeKind.MODIFIED, p, r) for p, r in current.items() if p in known and known[p].revision != r
    ]
    added = {p: r for p, r in current.items() if p not in known}
    gone = {k: content_id(d) for k, d in known.items() if k not in current and k not in keep}
    renames, added, gone = pair_renames(added, gone)
    return [
        *modified,
        *renames,
        *(Change(ChangeKind.ADDED, p, r) for p, r in added.items()),
        *(Change(ChangeKind.DELETED, p, None) for p in gone),
    ]


def sort_changes(changes: Iterable[Change]) -> list[Change]:
    """Deterministic order: by kind (added, modified, renamed, deleted), then key."""
    return sorted(changes, key=lambda c: (_KIND_ORDER[c.kind], c.key))


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class LocalFolderSource:
    """The documents under ``root``; keys are POSIX paths relative to it, revisions sha256 of the bytes.

    There is no cursor: every run hashes the files and compares them with the catalog. Hidden
    directories are skipped, and so are symlinked directories (no cycles, no duplicates) and file
    symlinks that point outside ``root``.
    """

    name: str
    root: Path
    include: list[str] | None = None
    kind: ClassVar[str] = "local"

    def changes(self, cursor: str | None, known: Mapping[str, KnownDocument]) -> ChangeSet:
        root = self._checked_root()
        current, unreadable, warnings = self._scan(root)
        keep = {k for k in known if any(k == u or k.startswith(u + "/") for u in unreadable)}
        changes = compare_with_known(current, known, lambda d: d.raw_sha256 or d.revision, keep)
        return ChangeSet(sort_changes(changes), cursor=None, warnings=warnings)

    def fetch(self, change: Change) -> bytes:
        path = self._document_path(change.key)
        try:
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
