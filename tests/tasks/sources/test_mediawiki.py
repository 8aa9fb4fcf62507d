"""The MediaWiki source against a real MediaWiki 1.39 (SQLite, ``php -S``), one namespace per test."""

from __future__ import annotations

import pytest
import requests

from tasks.settings import MediaWikiSourceConfig
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
from tasks.sources.mediawiki import Mark, MediaWikiSource, WikiClient, WikiError
from tests.fixtures.git import free_port
from tests.fixtures.mediawiki import Wiki
from tests.fixtures.proxy import FlakyProxy


def make_source(wiki: Wiki, *namespaces: int, api_url: str | None = None, **kwargs) -> MediaWikiSource:
    kwargs = {"retries": 1, "backoff_s": 0.05, "max_backoff_s": 0.1, "timeout_s": 10.0, **kwargs}
    return MediaWikiSource("wiki", api_url or wiki.api_url, username=wiki.reader_user,
                           password=wiki.reader_password, namespaces=namespaces, **kwargs)  # fmt: skip


def record(known: dict[str, KnownDocument], changeset: ChangeSet) -> dict[str, KnownDocument]:
    """What the catalog holds after recording every change of ``changeset``."""
    out = dict(known)
    for change in changeset.changes:
        if change.kind is ChangeKind.DELETED:
            out.pop(change.key, None)
        else:
            out[change.key] = KnownDocument(change.key, change.revision)
    return out


def summary(changes: list[Change]) -> list[tuple[str, str, str | None]]:
    return [(c.kind.value, c.key, c.title) for c in changes]


def test_first_run_lists_the_pages_of_the_namespaces_and_reads_wikitext(mediawiki, wiki_namespace):
    ns, other = wiki_namespace, mediawiki.next_namespace()
    editor = mediawiki.editor()
    alpha = editor.save(f"T{ns}:Alpha", "'''Alpha''' station opened in 1987.")
    beta = editor.save(f"T{ns}:Beta page", "== Beta ==\nBeta robots are serviced on Tuesdays.")
    editor.save(f"T{ns}:Old name", f"#REDIRECT [[T{ns}:Alpha]]")  # a redirect is not a document
    editor.save(f"T{other}:Elsewhere", "Not in the source's namespace.")

    source = make_source(mediawiki, ns, page_size=1)  # one page per request: `continue` is followed
    changeset = source.changes(None, {})

    # Keys are page ids as strings, so their order depends on the ids the wiki handed out: compare as sets.
    assert sorted(summary(changeset.changes)) == sorted(
        [
            ("added", str(alpha["pageid"]), f"T{ns}:Alpha"),
            ("added", str(beta["pageid"]), f"T{ns}:Beta page"),
        ]
    )
    alpha_change = next(c for c in changeset.changes if c.key == str(alpha["pageid"]))
    assert alpha_change.revision == str(alpha["newrevid"])
    assert source.fetch(alpha_change) == b"'''Alpha''' station opened in 1987."
    assert changeset.cursor.rcid > 0


def test_changes_since_the_cursor_cover_new_edit_move_delete_and_create_then_delete(
    mediawiki, wiki_namespace
):
    ns = wiki_namespace
    editor = mediawiki.editor()
    ids = {name: editor.save(f"T{ns}:{name}", f"{name} text.")["pageid"] for name in ("Edit", "Move", "Gone")}
    editor.save(f"T{ns}:Keep", "Keep text.")
    source = make_source(mediawiki, ns, page_size=2)
    first = source.changes(None, {})
    known = record({}, first)

    created = editor.save(f"T{ns}:New", "New text.")["pageid"]
    editor.save(f"T{ns}:Edit", "Edit text, edited.")
    editor.save(f"T{ns}:Keep", "Keep text.")  # a null edit: no revision, no change
    editor.move(f"T{ns}:Move", f"T{ns}:Moved")
    editor.delete(f"T{ns}:Gone")
    editor.save(f"T{ns}:Brief", "Created and deleted between two runs.")
    editor.delete(f"T{ns}:Brief")
    second = source.changes(first.cursor, known)

    assert summary(second.changes) == [
        ("added", str(created), f"T{ns}:New"),
        ("modified", str(ids["Edit"]), f"T{ns}:Edit"),
        ("renamed", str(ids["Move"]), f"T{ns}:Moved"),
        ("deleted", str(ids["Gone"]), None),
    ]
    rename = second.changes[2]
    assert rename.old_key == rename.key, "a move keeps the page id"
    assert source.fetch(rename) == b"Move text.", "a move changes the title, not the text"
    assert second.cursor > first.cursor

    third = source.changes(second.cursor, record(known, second))
    assert third.changes == [] and third.cursor == second.cursor


def test_rows_of_the_same_second_after_the_cursor_are_read_and_those_before_are_not(
    mediawiki, wiki_namespace
):
    ns = wiki_namespace
    editor = mediawiki.editor()
    source = make_source(mediawiki, ns)
    for attempt in range(10):  # two edits within one second; a slow machine may need a few tries
        first = editor.save(f"T{ns}:First {attempt}", "first")
        second = editor.save(f"T{ns}:Second {attempt}", "second")
        if first["newtimestamp"] == second["newtimestamp"]:
            break
    else:
        pytest.skip("could not make two edits within one second")
    stamp = first["newtimestamp"]
    # Other tests edit the same wiki: only this namespace's rows, all of them (the default limit is 10).
    params = {"action": "query", "list": "recentchanges", "rcprop": "ids|timestamp", "rcstart": stamp,
              "rcdir": "newer", "rcnamespace": str(ns), "rclimit": "max", "format": "json",
              "formatversion": "2"}  # fmt: skip
    rows = requests.get(mediawiki.api_url, params=params).json()["query"]["recentchanges"]
    rcid = {r["revid"]: r["rcid"] for r in rows}
    known = {str(first["pageid"]): KnownDocument(str(first["pageid"]), str(first["newrevid"]))}

    after_first = source.changes(Mark(stamp, rcid[first["newrevid"]]), known)
    assert summary(after_first.changes) == [("added", str(second["pageid"]), f"T{ns}:Second {attempt}")]
    assert after_first.cursor == Mark(stamp, rcid[second["newrevid"]])
    # From the second row on, neither row is read again: nothing changes, even for an empty catalog.
    assert source.changes(after_first.cursor, {}).changes == []


def test_moves_across_the_namespace_filter_are_deletions_and_additions(mediawiki, wiki_namespace):
    ns, other = wiki_namespace, mediawiki.next_namespace()
    editor = mediawiki.editor()
    leaving = editor.save(f"T{ns}:Leaving", "Leaving text.")["pageid"]
    arriving = editor.save(f"T{other}:Arriving", "Arriving text.")["pageid"]
    source = make_source(mediawiki, ns)
    first = source.changes(None, {})
    known = record({}, first)

    editor.move(f"T{ns}:Leaving", f"T{other}:Left")
    editor.move(f"T{other}:Arriving", f"T{ns}:Arrived")
    second = source.changes(first.cursor, known)
    assert summary(second.changes) == [
        ("added", str(arriving), f"T{ns}:Arrived"),
        ("deleted", str(leaving), None),
    ]


def test_a_deleted_page_comes_back_under_its_page_id_when_restored(mediawiki, wiki_namespace):
    ns = wiki_namespace
    editor = mediawiki.editor()
    page = editor.save(f"T{ns}:Phoenix", "Phoenix text.")
    source = make_source(mediawiki, ns)
    first = source.changes(None, {})
    known = record({}, first)

    editor.delete(f"T{ns}:Phoenix")
    editor.undelete(f"T{ns}:Phoenix")
    unchanged = source.changes(first.cursor, known)
    assert unchanged.changes == [], "deleted and restored between two runs: the same page, the same revision"

    editor.delete(f"T{ns}:Phoenix")
    deleted = source.changes(unchanged.cursor, known)
    assert summary(deleted.changes) == [("deleted", str(page["pageid"]), None)]
    editor.undelete(f"T{ns}:Phoenix")
    restored = source.changes(deleted.cursor, record(known, deleted))
    assert summary(restored.changes) == [("added", str(page["pageid"]), f"T{ns}:Phoenix")]
    assert restored.changes[0].revision == str(page["newrevid"])


def test_wrong_bot_password_is_one_source_error_that_never_shows_the_password(mediawiki, wiki_namespace):
    wrong = "not-the-password-0123456789abcdef"
    source = make_source(mediawiki, wiki_namespace)
    source.password = wrong
    with pytest.raises(SourceError) as err:
        source.changes(None, {})
    message = str(err.value)
    assert message.startswith("mediawiki source 'wiki'") and "login as 'Admin@reader' failed" in message
    assert wrong not in message and mediawiki.reader_password not in message
    assert wrong not in repr(source)


def test_unreachable_wiki_is_a_source_error_after_the_retries(mediawiki, wiki_namespace):
    url = f"http://127.0.0.1:{free_port()}/api.php"
    source = make_source(mediawiki, wiki_namespace, api_url=url, retries=2)
    with pytest.raises(SourceError, match=r"ConnectionError.*gave up after 3 attempts"):
        source.changes(None, {})


def test_maxlag_answers_are_retried_after_the_servers_retry_after_then_reported(mediawiki):
    sleeps: list[float] = []
    # A negative maxlag makes MediaWiki answer "maxlag" whatever the real lag: the server's own path.
    client = WikiClient(mediawiki.api_url, maxlag=-2, retries=2, sleep=sleeps.append)
    with pytest.raises(WikiError, match=r"maxlag: .*gave up after 3 attempts"):
        client.call({"action": "query", "meta": "siteinfo"})
    assert sleeps == [5.0, 5.0], "the wait comes from the server's Retry-After header"
    capped = WikiClient(mediawiki.api_url, maxlag=-2, retries=1, max_backoff_s=0.5, sleep=sleeps.append)
    with pytest.raises(WikiError):
        capped.call({"action": "query", "meta": "siteinfo"})
    assert sleeps[-1] == 0.5


def test_server_failing_mid_run_is_retried_then_the_fetch_fails_transiently(mediawiki, wiki_namespace):
    ns = wiki_namespace
    mediawiki.editor().save(f"T{ns}:Flaky", "Flaky text.")
    proxy = FlakyProxy(mediawiki.port)
    try:
        source = make_source(mediawiki, ns, api_url=proxy.url("/api.php"), retries=3)
        (change,) = source.changes(None, {}).changes
        proxy.drop(2)
        assert source.fetch(change) == b"Flaky text."
        proxy.down()
        with pytest.raises(DocumentFetchError) as err:
            source.fetch(change)
        assert "gave up after 4 attempts" in str(err.value)
        assert not getattr(err.value, "permanent", False)
        proxy.up()
        assert source.fetch(change) == b"Flaky text."
    finally:
        proxy.close()


def test_fetching_a_revision_of_a_page_deleted_since_listing_is_stale(mediawiki, wiki_namespace):
    ns = wiki_namespace
    mediawiki.editor().save(f"T{ns}:Doomed", "Doomed text.")
    source = make_source(mediawiki, ns)
    (change,) = source.changes(None, {}).changes
    mediawiki.editor().delete(f"T{ns}:Doomed")
    with pytest.raises(StaleRevisionError, match=f"revision {change.revision} no longer exists"):
        source.fetch(change)


def test_config_keeps_the_password_in_the_environment_and_pages_parse_as_text(mediawiki, monkeypatch):
    cfg = MediaWikiSourceConfig(
        kind="mediawiki",
        name="wiki",
        api_url=mediawiki.api_url,
        username=mediawiki.reader_user,
        password_env="TEST_WIKI_PASSWORD",
    )
    stored = cfg.model_dump(mode="json", exclude={"name", "kind"})
    assert stored["password_env"] == "TEST_WIKI_PASSWORD" and mediawiki.reader_password not in str(stored)
    assert cfg.uri == mediawiki.api_url
    monkeypatch.delenv("TEST_WIKI_PASSWORD", raising=False)
    with pytest.raises(SourceError, match="environment variable TEST_WIKI_PASSWORD is not set"):
        build_source(cfg, settings=None)
    monkeypatch.setenv("TEST_WIKI_PASSWORD", mediawiki.reader_password)
    assert isinstance(build_source(cfg, settings=None), MediaWikiSource)
    page = Change(ChangeKind.ADDED, "12", "34", title="Main Page")
    assert build_source(cfg, settings=None).document_filename(page) == "Main Page.txt"
    with pytest.raises(ValueError, match="go together"):
        MediaWikiSourceConfig(kind="mediawiki", name="w", api_url=mediawiki.api_url, username="Admin@x")
