"""The artifact store on any S3 endpoint: the local store's URIs and guarantees, objects in a bucket.

The same ``store://`` URIs as ``tasks.store.LocalStore`` (the catalog never changes when a store moves to
a bucket) map to keys under the configured prefix: a blob ``store://<kind>/<ab>/<cdef...>`` is the key
``<prefix>/<kind>/<ab>/<cdef...>``, a folder ``store://<kind>/<digest>`` the keys
``<prefix>/<kind>/<digest>/<relative path>`` plus ``<prefix>/<kind>/<digest>/.instill-manifest.json``
(every file's sha256 and size), written last. A folder exists when its manifest does, so a writer that
crashed half-way leaves no folder, and the next ``put_dir`` completes it; once the manifest is there the
folder is never written again. A blob is put once (``If-None-Match: *``), carrying its sha256 as metadata.

Reads verify: a blob's bytes against the sha256 in its URI, a folder's files against its manifest, so a
tampered or truncated object is a ``StoreError`` naming the URI. ``get_dir`` downloads a folder into a
local cache (``cache_dir/<kind>/<digest>/``, staged and renamed like the local store) and returns that
path; ``locate`` gives the ``s3://`` URI of an object, and ``fetch_folder`` downloads such a URI in any
process that can reach the bucket (e.g. to load an adapter with PEFT from its S3 URI alone).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import StoreUnavailable, first_line
from tasks.store import StoredObject, StoreError, _is_dir_uri, _split, blob_uri, dir_uri, sha256_bytes
from tasks.store import sha256_file as file_sha256

MANIFEST = ".instill-manifest.json"
_MISSING = {"NoSuchKey", "404", "NotFound"}


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith("s3://") or "/" not in uri[5:]:
            raise StoreError(f"{uri}: not an s3://<bucket>/<key> URI")
        bucket, key = uri[5:].split("/", 1)
        return cls(bucket, key.rstrip("/"))


class S3Store:
    """A content-addressed, write-once store under ``prefix`` of ``bucket``; ``root`` is the local cache."""

    def __init__(self, client, bucket: str, prefix: str, cache_dir: Path, where: str | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root = Path(cache_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.where = where or f"s3://{bucket}/{self.prefix}"

    def put_bytes(self, data: bytes, kind: str) -> StoredObject:
        """Store ``data`` once; the same bytes again return the same URI and write nothing."""
        digest = sha256_bytes(data)
        uri = blob_uri(kind, digest)
        key = self._key(uri)
        head = self._head(key, uri)
        if head is None or head.get("Metadata", {}).get("sha256") != digest:
            # Absent, or a copy that is not ours (overwritten by hand): the content address decides.
            self._put(key, data, digest, uri, once=head is None)
        return StoredObject(uri=uri, sha256=digest, size=len(data))

    def get_bytes(self, uri: str) -> bytes:
        """The blob's bytes, checked against the sha256 in its URI."""
        if _is_dir_uri(uri):
            raise StoreError(f"{uri}: is a folder, not a blob (use get_dir)")
        data = self._get(self._key(uri), uri)
        _, head, tail = _split(uri)
        if sha256_bytes(data) != head + tail:
            where = self.locate(uri)
            raise StoreError(f"{uri}: stored content does not match its sha256 (corrupted object {where})")
        return data

    def put_dir(self, path: Path, kind: str, digest: str) -> str:
        """Upload the folder ``path`` as ``<kind>/<digest>/``, manifest last; an existing folder is kept."""
        uri = dir_uri(kind, digest)
        if self.exists(uri):
            return uri
        folder = Path(path)
        if not folder.is_dir():
            raise StoreError(f"{uri}: cannot store {path}: not a directory")
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        if MANIFEST in files:
            raise StoreError(f"{uri}: cannot store {path}: it holds a file named {MANIFEST}")
        manifest = {"uri": uri, "files": {}}
        for rel, file in files.items():
            data = file.read_bytes()
            sha = sha256_bytes(data)
            self._put(f"{self._key(uri)}/{rel}", data, sha, uri, once=False)
            manifest["files"][rel] = {"sha256": sha, "size": len(data)}
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        self._put(f"{self._key(uri)}/{MANIFEST}", body, sha256_bytes(body), uri, once=True)
        return uri

    def get_dir(self, uri: str) -> Path:
        """A verified local copy of a stored folder (read it, never write to it)."""
        if not _is_dir_uri(uri):
            raise StoreError(f"{uri}: is a blob, not a folder (use get_bytes)")
        kind, digest = _split(uri)
        return _download(self, uri, f"{self._key(uri)}", self.root / kind / digest)

    def exists(self, uri: str) -> bool:
        key = f"{self._key(uri)}/{MANIFEST}" if _is_dir_uri(uri) else self._key(uri)
        return self._head(key, uri) is not None

    def locate(self, uri: str) -> str:
        """The ``s3://`` URI of a stored object (a folder's is the prefix of its files)."""
        return S3Location(self.bucket, self._key(uri)).uri

    def check(self) -> None:
        """The bucket is reachable with these credentials, else one ``StoreUnavailable`` line."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self._unavailable(exc) from None

    # --- S3 calls, each failure one line ---------------------------------------------------------------

    def _key(self, uri: str) -> str:
        parts = _split(uri)
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def _head(self, key: str, uri: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _code(exc) in _MISSING:
                return None
            raise self._unavailable(exc) from None

    def _get(self, key: str, uri: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            if _code(exc) in _MISSING:
                raise StoreError(f"{uri}: not in the store at {self.where}") from None
            raise self._unavailable(exc) from None

    def _put(self, key: str, data: bytes, sha: str, uri: str, once: bool) -> None:
        extra = {"IfNoneMatch": "*"} if once else {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata={"sha256": sha}, **extra)
        except Exception as exc:
            if once and _code(exc) in {"PreconditionFailed", "ConditionalRequestConflict"}:
                return  # another writer put the same content first
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"artifact store {self.where}: {_reason(exc)}")


def _download(store: S3Store, uri: str, key: str, target: Path) -> Path:
    """``target``, verified against the manifest under ``key``; downloaded (staged, renamed) if needed."""
    try:
        manifest = json.loads(store._get(f"{key}/{MANIFEST}", uri))["files"]
    except (ValueError, KeyError, TypeError):
        raise StoreError(f"{uri}: its manifest {key}/{MANIFEST} is not valid JSON") from None
    if target.is_dir() and _matches(target, manifest):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex}"
    try:
        for rel, meta in manifest.items():
            data = store._get(f"{key}/{rel}", uri)
            if sha256_bytes(data) != meta["sha256"]:
                raise StoreError(f"{uri}: {rel} does not match its manifest (corrupted object {key}/{rel})")
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if target.exists():  # a stale or tampered copy in the cache
            shutil.rmtree(target)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target.is_dir() and _matches(target, manifest)):  # not another reader winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _matches(folder: Path, manifest: dict) -> bool:
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    if present != set(manifest):
        return False
    return all(file_sha256(folder / rel) == meta["sha256"] for rel, meta in manifest.items())


def fetch_folder(s3_uri: str, target: Path, client=None) -> Path:
    """Download the stored folder at ``s3_uri`` (``S3Store.locate`` of a folder) into ``target``, verified.

    ``client`` defaults to boto3's own (``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ... from the
    environment), so a process that knows nothing but the URI can load an adapter."""
    import boto3

    where = S3Location.parse(s3_uri)
    store = S3Store(client or boto3.client("s3"), where.bucket, "", Path(target).parent, where=s3_uri)
    return _download(store, s3_uri, where.key, Path(target))


def make_client(endpoint_url: str | None, region: str | None, key_pair: tuple[str, str] | None, retries: int):
    """A boto3 S3 client: the given key pair, else boto3's usual credential chain."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=key_pair[0] if key_pair else None,
        aws_secret_access_key=key_pair[1] if key_pair else None,
        region_name=region or "us-east-1",
    )
    config = Config(
        retries={"max_attempts": retries + 1, "mode": "standard"},
        connect_timeout=30,
        read_timeout=60,
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def _code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code")) or None
    return None


def _reason(exc: Exception) -> str:
    """One line; botocore's messages name the endpoint and the error code, never the secret."""
    from botocore.exceptions import NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return "no S3 credentials found (set the store's credential variables or the AWS environment)"
    if _code(exc) == "NoSuchBucket":
        return "the bucket does not exist"
    return first_line(exc, 240)
