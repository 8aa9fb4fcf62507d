"""The S3 source against a real S3 server (moto in server mode, with IAM authentication on)."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from tasks.settings import KnowledgeBase, S3SourceConfig
from tasks.sources import build_source
from tasks.sources.base import (
    Change,
    ChangeKind,
    ChangeSet,
    DocumentFetchError,
    KnownDocument,
    SourceError,
    StaleRevisionError,
)
from tasks.sources.s3 import DocumentTooLargeError, S3Source
from tests.fixtures.git import free_port
from tests.fixtures.proxy import FlakyProxy
from tests.fixtures.s3 import Bucket, S3Server


def make_source(server: S3Server, bucket: Bucket, endpoint: str | None = None, **kwargs) -> S3Source:
    kwargs = {"retries": 1, "timeout_s": 5.0, **kwargs}
    return S3Source("kb", bucket.name, endpoint_url=endpoint or server.endpoint_url,
                    access_key_id=server.access_key_id, secret_access_key=server.secret_access_key,
                    **kwargs)  # fmt: skip


def record(known: dict[str, KnownDocument], changeset: ChangeSet) -> dict[str, KnownDocument]:
    """What the catalog holds after recording every change of ``changeset``."""
    out = dict(known)
    for change in changeset.changes:
        if change.old_key:
            out.pop(change.old_key, None)
        if change.kind is ChangeKind.DELETED:
            out.pop(change.key, None)
        else:
            out[change.key] = KnownDocument(change.key, change.revision)
    return out


def kinds(changes: list[Change]) -> list[tuple[str, str, str | None]]:
    return [(c.kind.value, c.key, c.old_key) for c in changes]


def md5(data: str) -> str:
    return hashlib.md5(data.encode()).hexdigest()


def test_listing_follows_every_page_and_selects_documents_under_the_prefix(s3_server, make_bucket):
    bucket = make_bucket()
    docs = {f"kb/note {i}.md": f"# Note {i}\n\nFact number {i}.\n" for i in range(5)}
    docs["kb/Ünïcode wörds/ça va.txt"] = "Grüße aus Zürich.\n"
    for key, text in docs.items():
        bucket.put(key, text)
    bucket.put("kb/image.bin", b"\x00\x01")  # not a document
    bucket.put("kb/.hidden/secret.md", "hidden")
    bucket.put("kb/folder/", b"")  # a console-made "folder"
    bucket.put("other/outside.md", "outside the prefix")

    source = make_source(s3_server, bucket, prefix="kb/", page_size=2)
    changeset = source.changes(None, {})

    assert kinds(changeset.changes) == [("added", key, None) for key in sorted(docs)]
    assert changeset.cursor is None
    revisions = {c.key: c.revision for c in changeset.changes}
    assert revisions["kb/note 0.md"] == f"etag:{md5(docs['kb/note 0.md'])}"
    unicode_change = next(c for c in changeset.changes if c.key.startswith("kb/Ü"))
    assert source.fetch(unicode_change) == docs["kb/Ünïcode wörds/ça va.txt"].encode()


def test_unversioned_bucket_changes_by_etag_with_renames_paired_by_equal_etags(s3_server, make_bucket):
    bucket = make_bucket()
    for name in ("edit", "same", "move", "gone"):
        bucket.put(f"{name}.md", f"The {name} document has its own text.\n")
    source = make_source(s3_server, bucket)
    known = record({}, source.changes(None, {}))

    bucket.put("edit.md", "The edit document was edited.\n")
    bucket.put("same.md", "The same document has its own text.\n")  # rewritten with identical bytes
    bucket.rename("move.md", "moved/move.md")
    bucket.delete("gone.md")
    bucket.put("new.md", "A new document.\n")
    changeset = source.changes(None, known)

    assert kinds(changeset.changes) == [
        ("added", "new.md", None),
        ("modified", "edit.md", None),
        ("renamed", "moved/move.md", "move.md"),
        ("deleted", "gone.md", None),
    ]
    rename = changeset.changes[2]
    assert rename.revision == known["move.md"].revision, "an unchanged rename keeps its revision"
    assert source.changes(None, record(known, changeset)).changes == []


def test_versioned_bucket_changes_by_version_id_and_delete_markers(s3_server, make_bucket):
    bucket = make_bucket(versioned=True)
    for name in ("edit", "move", "gone", "keep"):
        bucket.put(f"docs/{name}.md", f"The {name} document.\n")
    source = make_source(s3_server, bucket, prefix="docs/")
    first = source.changes(None, {})
    assert all(c.revision.startswith("version:") for c in first.changes)
    known = record({}, first)
    old_edit = next(c for c in first.changes if c.key == "docs/edit.md")

    bucket.put("docs/edit.md", "The edit document, second version.\n")
    bucket.rename("docs/move.md", "docs/moved.md")  # copy + delete marker
    bucket.delete("docs/gone.md")  # a delete marker; the old version stays in the bucket
    changeset = source.changes(None, known)

    assert kinds(changeset.changes) == [
        ("modified", "docs/edit.md", None),
        ("renamed", "docs/moved.md", "docs/move.md"),
        ("deleted", "docs/gone.md", None),
    ]
    edit = changeset.changes[0]
    assert source.fetch(edit) == b"The edit document, second version.\n"
    assert source.fetch(old_edit) == b"The edit document.\n", "content is read by version id"
    assert source.changes(None, record(known, changeset)).changes == []


def test_multipart_etags_are_compared_for_equality_only(s3_server, make_bucket):
    bucket = make_bucket()
    parts = [b"A" * 20 + b"\n", b"The multipart document ends here.\n"]
    bucket.put_multipart("big.txt", parts)
    bucket.put("single.txt", b"".join(parts))  # same bytes, single part: a different ETag
    source = make_source(s3_server, bucket)
    first = source.changes(None, {})
    multipart = next(c for c in first.changes if c.key == "big.txt")
    assert multipart.revision.endswith("-2"), "a multipart ETag is not an MD5 of the content"
    assert source.fetch(multipart) == b"".join(parts)
    known = record({}, first)

    bucket.delete("single.txt")
    bucket.put("copy.txt", b"".join(parts))  # the deleted single-part object's ETag: a rename
    changeset = source.changes(None, known)
    assert kinds(changeset.changes) == [("renamed", "copy.txt", "single.txt")]


def test_object_over_max_bytes_is_listed_but_refused_with_a_per_document_error(s3_server, make_bucket):
    bucket = make_bucket()
    bucket.put("small.md", "small\n")
    bucket.put("huge.md", "x" * 200)
    source = make_source(s3_server, bucket, max_bytes=100)
    changes = {c.key: c for c in source.changes(None, {}).changes}
    assert set(changes) == {"small.md", "huge.md"}
    assert source.fetch(changes["small.md"]) == b"small\n"
    with pytest.raises(DocumentTooLargeError) as err:
        source.fetch(changes["huge.md"])
    assert err.value.permanent and err.value.key == "huge.md"
    assert "200 bytes" in str(err.value) and "max_bytes of 100" in str(err.value)


def test_an_object_overwritten_after_listing_is_a_stale_fetch(s3_server, make_bucket):
    bucket = make_bucket()
    bucket.put("a.md", "first\n")
    source = make_source(s3_server, bucket)
    (change,) = source.changes(None, {}).changes
    bucket.put("a.md", "second\n")
    with pytest.raises(StaleRevisionError, match="overwritten since it was listed"):
        source.fetch(change)
    bucket.delete("a.md")
    with pytest.raises(StaleRevisionError, match="deleted since it was listed"):
        source.fetch(change)


@pytest.mark.parametrize("bad", ["secret", "key id"])
def test_wrong_credentials_fail_the_source_with_one_error_and_no_secret(s3_server, make_bucket, bad):
    bucket = make_bucket()
    bucket.put("a.md", "a\n")
    wrong = "wrong-secret-value-123"
    source = make_source(s3_server, bucket)
    if bad == "secret":
        source.secret_access_key = wrong
    else:
        source.access_key_id = "AKIAWRONGWRONGWRONG1"
    with pytest.raises(SourceError) as err:
        source.changes(None, {})
    message = str(err.value)
    assert message.startswith("s3 source 'kb'") and bucket.name in message
    assert ("SignatureDoesNotMatch" if bad == "secret" else "InvalidAccessKeyId") in message
    assert wrong not in message and s3_server.secret_access_key not in message


def test_unreachable_server_and_missing_bucket_are_source_errors(s3_server, make_bucket):
    bucket = make_bucket()
    dead = make_source(s3_server, bucket, endpoint=f"http://127.0.0.1:{free_port()}", retries=0)
    with pytest.raises(SourceError, match="Could not connect"):
        dead.changes(None, {})
    missing = make_source(s3_server, bucket)
    missing.bucket = "no-such-bucket-here"
    with pytest.raises(SourceError, match="the bucket does not exist"):
        missing.changes(None, {})


def test_server_failing_mid_run_is_retried_then_the_fetch_fails_transiently(s3_server, make_bucket):
    bucket = make_bucket()
    bucket.put("a.md", "alpha\n")
    proxy = FlakyProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1]))
    try:
        source = make_source(s3_server, bucket, endpoint=proxy.url(), retries=2)
        (change,) = source.changes(None, {}).changes
        proxy.drop(2)  # two failed connections, then the server is back: the retries carry the fetch
        before = proxy.accepted
        assert source.fetch(change) == b"alpha\n"
        assert proxy.accepted - before >= 3
        proxy.down()
        with pytest.raises(DocumentFetchError) as err:
            source.fetch(change)
        assert not getattr(err.value, "permanent", False), "a server outage is worth retrying next run"
        proxy.up()
        assert source.fetch(change) == b"alpha\n"
    finally:
        proxy.close()


def test_config_names_credential_variables_and_the_catalog_never_sees_a_secret(
    s3_server, make_bucket, monkeypatch
):
    bucket = make_bucket()
    bucket.put("a.md", "a\n")
    raw = {
        "name": "kb",
        "sources": [
            {
                "kind": "s3",
                "name": "bucket",
                "bucket": bucket.name,
                "endpoint_url": s3_server.endpoint_url,
                "access_key_id_env": "TEST_S3_KEY",
                "secret_access_key_env": "TEST_S3_SECRET",
            }  # fmt: skip
        ],
    }
    cfg = KnowledgeBase.model_validate(yaml.safe_load(yaml.safe_dump(raw))).sources[0]
    assert isinstance(cfg, S3SourceConfig)
    stored = cfg.model_dump(mode="json", exclude={"name", "kind"})  # what detect writes to sources.config
    assert stored["secret_access_key_env"] == "TEST_S3_SECRET"
    assert s3_server.secret_access_key not in str(stored)
    assert cfg.uri == f"{s3_server.endpoint_url}/{bucket.name}/"

    monkeypatch.delenv("TEST_S3_SECRET", raising=False)
    monkeypatch.setenv("TEST_S3_KEY", s3_server.access_key_id)
    with pytest.raises(SourceError, match="environment variable TEST_S3_SECRET is not set"):
        build_source(cfg, settings=None)
    monkeypatch.setenv("TEST_S3_SECRET", s3_server.secret_access_key)
    source = build_source(cfg, settings=None)
    assert s3_server.secret_access_key not in repr(source)
    assert kinds(source.changes(None, {}).changes) == [("added", "a.md", None)]


def test_config_refuses_half_a_key_pair():
    with pytest.raises(ValueError, match="go together"):
        S3SourceConfig(kind="s3", name="b", bucket="bucket", access_key_id_env="ONLY_ONE")
