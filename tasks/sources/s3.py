"""S3 source: the objects under one prefix of a bucket (AWS or any S3-compatible server), read with boto3.

There is no change feed to follow, so every run lists the prefix (all pages) and compares it with the
catalog; the cursor stays ``None``. A document's revision is ``version:<VersionId>`` in a versioned bucket
and ``etag:<ETag>`` otherwise (and for objects written while versioning was off, whose VersionId is
``null`` and so says nothing about their content). Revisions are compared for equality only; an ETag is
never taken for a content hash (multipart and SSE-KMS ETags are not MD5s). S3 has no renames: a deleted
key whose ETag equals an added key's is paired into a rename, as equal ETags mean equal bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tasks.sources.base import (
    Change,
    ChangeKind,
    ChangeSet,
    DocumentFetchError,
    KnownDocument,
    Source,
    SourceError,
    StaleRevisionError,
    is_selected,
    pair_renames,
    secret,
    sort_changes,
)

if TYPE_CHECKING:
    from tasks.settings import S3SourceConfig, Settings

DEFAULT_MAX_BYTES = 50 * 2**20
_VERSION = "version:"
_ETAG = "etag:"
# Codes meaning "these credentials may not do that", as opposed to "these credentials are wrong".
_DENIED = {"AccessDenied", "AllAccessDisabled"}
_GONE = {"NoSuchKey", "NoSuchVersion", "404"}
_CHANGED = {"PreconditionFailed", "412"}


class DocumentTooLargeError(DocumentFetchError):
    """The object is larger than the source's ``max_bytes``: refused until it shrinks or the limit grows.

    ``permanent``: retrying gives the same answer, so the pipeline records the failure instead of
    keeping the cursor back for it.
    """

    permanent = True


@dataclass(frozen=True)
class ObjectState:
    revision: str
    etag: str
    size: int


@dataclass
class Listing:
    """The live documents under the prefix, and the ETag of every revision seen (for rename pairing)."""

    current: dict[str, ObjectState] = field(default_factory=dict)
    etags: dict[str, str] = field(default_factory=dict)


def _etag(raw: str) -> str:
    return raw.strip('"')


def _revision(version_id: str | None, etag: str) -> str:
    if version_id and version_id != "null":
        return f"{_VERSION}{version_id}"
    return f"{_ETAG}{etag}"


@dataclass
class S3Source(Source):
    """Documents under ``prefix`` (a plain key prefix) of ``bucket``; keys are whole object keys.

    Credentials: the ones given, else boto3's usual chain (environment, profile, instance role).
    """

    name: str
    bucket: str
    prefix: str = ""
    include: list[str] | None = None
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    max_bytes: int = DEFAULT_MAX_BYTES
    page_size: int = 1000
    retries: int = 4
    timeout_s: float = 30.0
    kind: ClassVar[str] = "s3"

    @classmethod
    def from_config(cls, cfg: S3SourceConfig, settings: Settings) -> S3Source:
        return cls(
            cfg.name,
            cfg.bucket,
            prefix=cfg.prefix,
            include=cfg.include,
            endpoint_url=cfg.endpoint_url,
            region=cfg.region,
            access_key_id=secret(cfg.kind, cfg.name, cfg.access_key_id_env),
            secret_access_key=secret(cfg.kind, cfg.name, cfg.secret_access_key_env),
            max_bytes=cfg.max_bytes,
            page_size=cfg.page_size,
            retries=cfg.retries,
        )

    @property
    def location(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    def changes(self, cursor: None, known: Mapping[str, KnownDocument]) -> ChangeSet:
        client = self._client()
        warnings: list[str] = []
        try:
            versioned = self._versioned(client, warnings)
            listing = self._list_versions(client) if versioned else self._list_objects(client)
        except Exception as exc:
            raise SourceError(self._message(_reason(exc))) from None
        return ChangeSet(sort_changes(compare(listing, known)), cursor=None, warnings=warnings)

    def fetch(self, change: Change) -> bytes:
        rev = change.revision or ""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": change.key}
        if rev.startswith(_VERSION):
            args["VersionId"] = rev.removeprefix(_VERSION)
        elif rev.startswith(_ETAG):
            args["IfMatch"] = f'"{rev.removeprefix(_ETAG)}"'
        else:
            raise DocumentFetchError(self.name, change.key, f"not an S3 revision: {rev!r}")
        try:
            response = self._client().get_object(**args)
        except Exception as exc:
            code = _code(exc)
            if code in _GONE:
                raise StaleRevisionError(self.name, change.key, "deleted since it was listed") from None
            if code in _CHANGED:
                raise StaleRevisionError(self.name, change.key, "overwritten since it was listed") from None
            raise DocumentFetchError(self.name, change.key, _reason(exc)) from None
        return self._read(change.key, response)

    def _read(self, key: str, response: dict) -> bytes:
        body = response["Body"]
        try:
            if response.get("ContentLength", 0) > self.max_bytes:
                raise self._too_large(key, response["ContentLength"])
            data = body.read(self.max_bytes + 1)
            if len(data) > self.max_bytes:
                raise self._too_large(key, len(data))
            return data
        except DocumentFetchError:
            raise
        except Exception as exc:
            raise DocumentFetchError(self.name, key, f"reading the object failed: {_reason(exc)}") from None
        finally:
            body.close()

    def _too_large(self, key: str, size: int) -> DocumentTooLargeError:
        return DocumentTooLargeError(
            self.name, key, f"the object is {size} bytes, over this source's max_bytes of {self.max_bytes}"
        )

    # -- listing -----------------------------------------------------------------------------------

    def _versioned(self, client, warnings: list[str]) -> bool:
        try:
            status = client.get_bucket_versioning(Bucket=self.bucket).get("Status")
        except Exception as exc:
            if _code(exc) not in _DENIED:
                raise
            warnings.append(
                f"s3 source {self.name!r}: may not read the bucket's versioning state; "
                "comparing ETags instead of version ids"
            )
            return False
        return status in ("Enabled", "Suspended")

    def _pages(self, client, operation: str) -> Iterator[dict]:
        paginator = client.get_paginator(operation)
        config = {"PageSize": self.page_size}
        yield from paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, PaginationConfig=config)

    def _list_objects(self, client) -> Listing:
        listing = Listing()
        for page in self._pages(client, "list_objects_v2"):
            for obj in page.get("Contents", ()):
                if self._selected(obj["Key"]):
                    etag = _etag(obj["ETag"])
                    listing.current[obj["Key"]] = ObjectState(_revision(None, etag), etag, obj["Size"])
        return listing

    def _list_versions(self, client) -> Listing:
        listing = Listing()
        deleted: set[str] = set()
        for page in self._pages(client, "list_object_versions"):
            for marker in page.get("DeleteMarkers", ()):
                if marker["IsLatest"]:
                    deleted.add(marker["Key"])
            for obj in page.get("Versions", ()):
                if not self._selected(obj["Key"]):
                    continue
                etag = _etag(obj["ETag"])
                state = ObjectState(_revision(obj["VersionId"], etag), etag, obj["Size"])
                listing.etags[state.revision] = etag
                if obj["IsLatest"]:
                    listing.current[obj["Key"]] = state
        for key in deleted:
            listing.current.pop(key, None)
        return listing

    def _selected(self, key: str) -> bool:
        return key.startswith(self.prefix) and is_selected(key, self.include)

    def _client(self):
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region or "us-east-1",
        )
        config = Config(
            retries={"max_attempts": self.retries + 1, "mode": "standard"},
            connect_timeout=self.timeout_s,
            read_timeout=self.timeout_s,
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        return session.client("s3", endpoint_url=self.endpoint_url, config=config)

    def _message(self, reason: str) -> str:
        return f"s3 source {self.name!r} ({self.location}): {reason}"


def compare(listing: Listing, known: Mapping[str, KnownDocument]) -> list[Change]:
    """The changes that turn the catalog's ``known`` into ``listing``; renames paired by equal ETags."""
    current = listing.current
    modified = [
        Change(ChangeKind.MODIFIED, k, s.revision)
        for k, s in current.items()
        if k in known and known[k].revision != s.revision
    ]
    added = {k: s.etag for k, s in current.items() if k not in known}

    def etag_of(key: str, doc: KnownDocument) -> str:
        if doc.revision.startswith(_ETAG):
            return doc.revision.removeprefix(_ETAG)
        # A version no longer listed (purged) pairs with nothing.
        return listing.etags.get(doc.revision, f"unknown {key}")

    gone = {k: etag_of(k, d) for k, d in known.items() if k not in current}
    renames, added, gone = pair_renames(added, gone)
    return [
        *modified,
        *(Change(ChangeKind.RENAMED, c.key, current[c.key].revision, old_key=c.old_key) for c in renames),
        *(Change(ChangeKind.ADDED, k, current[k].revision) for k in added),
        *(Change(ChangeKind.DELETED, k, None) for k in gone),
    ]


def _code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def _reason(exc: Exception) -> str:
    """One line for an S3 failure; botocore's messages name the endpoint and error code, never the secret."""
    from botocore.exceptions import NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials found (set the source's credential variables or the AWS environment)"
    code = _code(exc)
    if code == "NoSuchBucket":
        return "the bucket does not exist"
    return f"{type(exc).__name__}: {exc}"
