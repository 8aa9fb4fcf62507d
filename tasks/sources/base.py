"""What every source connector speaks, and the helpers they share.

A connector is a plain class (after dlt's sources, with an explicit cursor) that builds itself from its
configuration (``from_config``) and answers two calls:

- ``changes(cursor, known) -> ChangeSet``: what was added, modified, renamed or deleted since
  ``cursor`` (``None`` on the first run), compared with ``known``, the documents the catalog holds
  for this source keyed by their current key (path, S3 key, wiki page id). It never moves the
  cursor itself: the pipeline stores ``ChangeSet.cursor`` only after every change is recorded.
- ``fetch(change) -> bytes``: the document's bytes at ``change.revision``.

The cursor is the connector's own small frozen dataclass (``cursor_type``, a ``Cursor``), stored in the
catalog as JSON; connectors that compare everything on every run have none. Shared here: change
ordering and rename pairing, path selection, the fetch errors, secrets from the environment, and
``redact`` for URLs with credentials.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    from tasks.settings import Settings

# Files the parser understands; anything else in a source is ignored.
DOCUMENT_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".docx")
# Sidecar files that hold QA probes for a document, never documents themselves.
QA_SUFFIX = ".qa.yaml"


class ChangeKind(StrEnum):
    ADDED = "added"
    MODIFIED = "modified"
    RENAMED = "renamed"
    DELETED = "deleted"


@dataclass(frozen=True)
class KnownDocument:
    """The catalog's view of one live document of a source."""

    key: str  # current key: path for git/local, object key for S3, page id for wikis
    revision: str  # source revision of the latest recorded version (blob id, sha256, version id, revid)
    raw_sha256: str | None = None  # sha256 of the bytes of that version, when known


@dataclass(frozen=True)
class Change:
    """One document's change. For a rename, ``old_key`` is the key it had before."""

    kind: ChangeKind
    key: str
    revision: str | None  # the new revision; None for a deletion
    old_key: str | None = None
    title: str | None = None  # a display path/title when it differs from the key (wiki titles)
    # Read again although the catalog holds this revision: its source's ``content`` setting changed,
    # which can change the document's kind (``tasks.detect``).
    reread: bool = False


@dataclass(frozen=True)
class Cursor:
    """A connector's position in its change feed; subclasses are small frozen dataclasses."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Self:
        """The cursor stored as ``text``; ValueError when it is not one of this class."""
        try:
            fields = json.loads(text)
            return cls(**fields) if isinstance(fields, dict) else cls(fields)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a {cls.__name__}: {text!r}") from exc


@dataclass
class ChangeSet:
    changes: list[Change]
    cursor: Cursor | None  # the cursor to store once every change is recorded
    warnings: list[str] = field(default_factory=list)


class SourceError(RuntimeError):
    """A whole source failed (unreachable, bad credentials, bad config): its cursor stays put."""


class DocumentFetchError(RuntimeError):
    """One document could not be fetched; the pipeline records the failure and retries on the next run.

    ``permanent`` errors (the document itself is unacceptable, e.g. over a size limit) are recorded like a
    parse failure instead, and not retried while the document is unchanged.
    """

    permanent = False

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"source {source!r}: cannot fetch {key!r}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


class TooLargeError(DocumentFetchError):
    """The document is larger than its source's ``max_bytes``: refused (recorded, not retried)."""

    permanent = True

    def __init__(self, source: str, key: str, size: int, limit: int) -> None:
        super().__init__(source, key, f"{size:,} bytes, over the source's max_bytes of {limit:,}")


class StaleRevisionError(DocumentFetchError):
    """The document's bytes changed between ``changes()`` and ``fetch()``."""


class Source:
    """The base of every connector: the default file naming and no cursor; subclasses are dataclasses."""

    name: str
    kind: ClassVar[str]
    cursor_type: ClassVar[type[Cursor] | None] = None  # None: every run compares everything

    @classmethod
    def from_config(cls, cfg: Any, settings: Settings) -> Self:
        """The connector for one configured source (secrets read from the environment here)."""
        raise NotImplementedError

    def changes(self, cursor: Cursor | None, known: Mapping[str, KnownDocument]) -> ChangeSet:
        raise NotImplementedError

    def fetch(self, change: Change) -> bytes:
        raise NotImplementedError

    def document_filename(self, change: Change) -> str:
        """The name the parser picks a format by: the key (a path or object key) unless overridden."""
        return change.key


def load_cursor(source: Source, stored: str | None, warnings: list[str]) -> Cursor | None:
    """The typed cursor stored in the catalog; None (start over, with a warning) when unreadable."""
    if stored is None or source.cursor_type is None:
        return None
    try:
        return source.cursor_type.from_json(stored)
    except ValueError:
        warnings.append(f"{source.kind} source {source.name!r}: unreadable cursor {stored!r}; started over")
        return None


def dump_cursor(cursor: Cursor | None) -> str | None:
    return cursor.to_json() if cursor is not None else None


def secret(kind: str, name: str, env_name: str | None) -> str | None:
    """The value of the environment variable a config names for a secret; the value is never logged."""
    if env_name is None:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise SourceError(f"{kind} source {name!r}: environment variable {env_name} is not set")
    return value


_USERINFO = re.compile(r"(?<=://)[^/\s]*@")  # greedy: up to the last @ of the authority


def redact(text: str) -> str:
    """Drop the user:password part of every URL in ``text`` (for messages and the catalog)."""
    return _USERINFO.sub("", text)


def is_document(path: str) -> bool:
    lower = path.lower()
    return lower.endswith(DOCUMENT_SUFFIXES) and not lower.endswith(QA_SUFFIX)


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

    Paths with a hidden component (``.git/``, ``.github/``, editor ``.#x.md`` files) never are: the
    file-tree sources skip them so that a folder and its Git repository hold the same documents.
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


_KIND_ORDER = {kind: i for i, kind in enumerate(ChangeKind)}


def sort_changes(changes: Iterable[Change]) -> list[Change]:
    """Deterministic order: by kind (added, modified, renamed, deleted), then key."""
    return sorted(changes, key=lambda c: (_KIND_ORDER[c.kind], c.key))
