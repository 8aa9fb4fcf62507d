"""What every source connector speaks: changes, a typed cursor, and the documents already known.

A connector is a plain class with two calls (after dlt's sources, with an explicit cursor):

- ``changes(cursor, known) -> ChangeSet``: what was added, modified, renamed or deleted since
  ``cursor`` (``None`` on the first run), compared with ``known``, the documents the catalog holds
  for this source keyed by their current key (path, S3 key, wiki page id). It never moves the
  cursor itself: the pipeline stores ``ChangeSet.cursor`` only after every change is recorded.
- ``fetch(change) -> bytes``: the document's bytes at ``change.revision``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

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


@dataclass
class ChangeSet:
    changes: list[Change]
    cursor: str | None  # the cursor to store once every change is recorded
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


class Source(Protocol):
    name: str
    kind: str

    def changes(self, cursor: str | None, known: Mapping[str, KnownDocument]) -> ChangeSet: ...

    def fetch(self, change: Change) -> bytes: ...


_USERINFO = re.compile(r"(?<=://)[^/\s]*@")  # greedy: up to the last @ of the authority


def redact(text: str) -> str:
    """Drop the user:password part of every URL in ``text`` (for messages and the catalog)."""
    return _USERINFO.sub("", text)


def is_document(path: str) -> bool:
    lower = path.lower()
    return lower.endswith(DOCUMENT_SUFFIXES) and not lower.endswith(QA_SUFFIX)
