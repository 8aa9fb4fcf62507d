"""The artifact store: content-addressed blobs and folders in a local directory (S3: ``tasks.store_s3``).

URIs name an object inside *a* store, not a place on disk: ``store://<kind>/<ab>/<cdef...>`` for a blob
(its sha256 split after two characters) and ``store://<kind>/<digest>`` for a folder. The catalog keeps
these URIs, so the store's root can move (or become a bucket) without rewriting lineage; the store that
wrote a URI resolves it again. Layout on disk mirrors the URI: ``<root>/<kind>/ab/cdef...`` and
``<root>/<kind>/<digest>/``.

Writes are atomic (a temporary name in the same directory, then a rename), so a crash leaves at most a
hidden ``.tmp-*`` entry, never a partial object under its real name.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

SCHEME = "store://"
_CHUNK = 1 << 20
_KIND = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# At least 3 characters, so a folder never lands on a blob shard directory (2 hex characters).
_DIGEST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class StoreError(RuntimeError):
    """An object is missing, corrupt, or a URI / argument is malformed; the message names the URI."""


@dataclass(frozen=True)
class StoredObject:
    uri: str
    sha256: str
    size: int


class ArtifactStore(Protocol):
    """What the pipeline needs from a store: ``LocalStore`` or ``tasks.store_s3.S3Store``.

    ``root`` is a local folder (the store itself, or an S3 store's download cache; callers stage files
    there); ``locate`` names where an object really lives (a path, or an ``s3://`` URI)."""

    root: Path

    def put_bytes(self, data: bytes, kind: str) -> StoredObject: ...

    def get_bytes(self, uri: str) -> bytes: ...

    def put_dir(self, path: Path, kind: str, digest: str) -> str: ...

    def get_dir(self, uri: str) -> Path: ...

    def exists(self, uri: str) -> bool: ...

    def locate(self, uri: str) -> str: ...


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return _sha256_stream(f)


def blob_uri(kind: str, sha256: str) -> str:
    _check_kind(kind)
    if not _HEX64.match(sha256):
        raise StoreError(f"bad sha256 {sha256!r}: 64 lower-case hex characters expected")
    return f"{SCHEME}{kind}/{sha256[:2]}/{sha256[2:]}"


def dir_uri(kind: str, digest: str) -> str:
    _check_kind(kind)
    if not _DIGEST.match(digest):
        raise StoreError(f"bad folder digest {digest!r}: 3-128 letters, digits, '.', '_', '-'")
    return f"{SCHEME}{kind}/{digest}"


class LocalStore:
    """A content-addressed store in a local directory (created if missing)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put_bytes(self, data: bytes, kind: str) -> StoredObject:
        """Store ``data``; storing the same bytes again returns the same URI and leaves the file alone."""
        digest = sha256_bytes(data)
        uri = blob_uri(kind, digest)
        target = self._path(uri)
        # A present file with the wrong content (a corrupted copy) is replaced, not trusted.
        if not (target.is_file() and sha256_file(target) == digest):
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(target, data)
        return StoredObject(uri=uri, sha256=digest, size=len(data))

    def get_bytes(self, uri: str) -> bytes:
        """The blob's bytes, checked against the sha256 in its URI."""
        if _is_dir_uri(uri):
            raise StoreError(f"{uri}: is a folder, not a blob (use get_dir)")
        path = self._path(uri)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{uri}: not in the store at {self.root}") from None
        if sha256_bytes(data) != _blob_digest(uri):
            raise StoreError(f"{uri}: stored content does not match its sha256 (corrupted file {path})")
        return data

    def put_dir(self, path: Path, kind: str, digest: str) -> str:
        """Copy the folder ``path`` to ``<kind>/<digest>/``; if that folder exists already, keep it."""
        uri = dir_uri(kind, digest)
        target = self._path(uri)
        if target.is_dir():
            return uri
        if not Path(path).is_dir():
            raise StoreError(f"{uri}: cannot store {path}: not a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".tmp-{digest}-{uuid.uuid4().hex}"
        try:
            shutil.copytree(path, staging)
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # not another writer winning the same race
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return uri

    def get_dir(self, uri: str) -> Path:
        """The local path of a stored folder (read it, never write to it)."""
        if not _is_dir_uri(uri):
            raise StoreError(f"{uri}: is a blob, not a folder (use get_bytes)")
        path = self._path(uri)
        if not path.is_dir():
            raise StoreError(f"{uri}: not in the store at {self.root}")
        return path

    def exists(self, uri: str) -> bool:
        path = self._path(uri)
        return path.is_dir() if _is_dir_uri(uri) else path.is_file()

    def locate(self, uri: str) -> str:
        """The local path of a stored object."""
        return str(self._path(uri))

    def _path(self, uri: str) -> Path:
        return self.root.joinpath(*_split(uri))


def _split(uri: str) -> list[str]:
    """The URI's path segments, validated so that no URI can point outside the store."""
    if not uri.startswith(SCHEME):
        raise StoreError(f"{uri}: not a store URI (expected {SCHEME}<kind>/...)")
    parts = uri[len(SCHEME) :].split("/")
    if len(parts) == 3 and _KIND.match(parts[0]) and _HEX64.match(parts[1] + parts[2]) and len(parts[1]) == 2:
        return parts
    if len(parts) == 2 and _KIND.match(parts[0]) and _DIGEST.match(parts[1]):
        return parts
    raise StoreError(f"{uri}: malformed store URI")


def _is_dir_uri(uri: str) -> bool:
    return len(_split(uri)) == 2


def _blob_digest(uri: str) -> str:
    _, head, tail = _split(uri)
    return head + tail


def _check_kind(kind: str) -> None:
    if not _KIND.match(kind):
        raise StoreError(f"bad object kind {kind!r}: lower-case letters, digits, '_', '-' only")


def _sha256_stream(f: BinaryIO) -> str:
    h = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _write_atomic(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; other readers (MLflow, servers) need to read it
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
