"""GitSource against real repositories with real commits (local paths, file:// and a git daemon)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.sources.base import Change, ChangeKind, ChangeSet, DocumentFetchError, KnownDocument, SourceError
from tasks.sources.git import GitCursor, GitSource, reconcile, redact
from tests.fixtures.git import GitDaemon, WorkRepo, free_port, git


def summary(result: ChangeSet) -> list[tuple[str, str, str | None]]:
    return [(c.kind.value, c.key, c.old_key) for c in result.changes]


def record(known: dict[str, KnownDocument], result: ChangeSet) -> dict[str, KnownDocument]:
    """Apply ``result`` to a catalog the way the pipeline does."""
    known = dict(known)
    for c in result.changes:
        if c.old_key is not None:
            known.pop(c.old_key)
        if c.kind is ChangeKind.DELETED:
            known.pop(c.key)
        else:
            known[c.key] = KnownDocument(c.key, c.revision)
    return known


@pytest.fixture
def repo(tmp_path: Path) -> WorkRepo:
    work = WorkRepo.create(tmp_path / "work")
    work.write("README.md", "# Readme\n")
    work.write("docs/guide.md", "Guide text that is long enough to be recognised after a small edit.\n" * 5)
    work.write("docs/faq.txt", "Questions and answers.\n")
    work.write("docs/old.md", "An old page.\n")
    work.write("src/main.py", "print('not a document')\n")
    work.commit("initial")
    return work


@pytest.fixture
def source(repo: WorkRepo, tmp_path: Path) -> GitSource:
    return GitSource("handbook", str(repo.path), workdir=tmp_path / "mirrors")


def first_run(source: GitSource) -> tuple[ChangeSet, dict[str, KnownDocument]]:
    result = source.changes(None, {})
    return result, record({}, result)


def test_first_run_adds_every_document_with_blob_ids_and_head_cursor(
    repo: WorkRepo, source: GitSource
) -> None:
    result, _ = first_run(source)
    assert summary(result) == [
        ("added", "README.md", None),
        ("added", "docs/faq.txt", None),
        ("added", "docs/guide.md", None),
        ("added", "docs/old.md", None),
    ]
    assert result.cursor == GitCursor(repo.head())
    assert result.changes[0].revision == repo.blob("README.md")
    assert result.warnings == []
    assert source.mirror.parent == source.workdir and (source.mirror / "HEAD").exists()


def test_second_run_without_new_commits_is_empty_and_keeps_the_cursor(source: GitSource) -> None:
    result, known = first_run(source)
    again = source.changes(result.cursor, known)
    assert again.changes == []
    assert again.cursor == result.cursor


def test_pure_rename_keeps_the_blob(repo: WorkRepo, source: GitSource) -> None:
    result, known = first_run(source)
    repo.move("docs/old.md", "archive/old.md")
    repo.commit("move")
    after = source.changes(result.cursor, known)
    assert after.changes == [
        Change(ChangeKind.RENAMED, "archive/old.md", known["docs/old.md"].revision, old_key="docs/old.md")
    ]
    assert after.cursor == GitCursor(repo.head())


def test_rename_with_edit_is_a_rename_carrying_the_new_blob(repo: WorkRepo, source: GitSource) -> None:
    result, known = first_run(source)
    repo.move("docs/guide.md", "docs/handbook.md")
    repo.write("docs/handbook.md", (repo.path / "docs/handbook.md").read_text() + "One more line.\n")
    repo.commit("rename and edit")
    after = source.changes(result.cursor, known)
    assert summary(after) == [("renamed", "docs/handbook.md", "docs/guide.md")]
    assert after.changes[0].revision == repo.blob("docs/handbook.md") != known["docs/guide.md"].revision


def test_delete_modify_and_non_document_add(repo: WorkRepo, source: GitSource) -> None:
    result, known = first_run(source)
    repo.remove("docs/old.md")
    repo.write("docs/faq.txt", "Questions, answers and more.\n")
    repo.write("src/util.py", "x = 1\n")
    repo.write("docs/faq.qa.yaml", "probes: []\n")
    repo.commit("mixed")
    after = source.changes(result.cursor, known)
    assert summary(after) == [("modified", "docs/faq.txt", None), ("deleted", "docs/old.md", None)]
    assert after.changes[0].revision == repo.blob("docs/faq.txt")
    assert after.changes[1].revision is None


def test_subdir_limits_documents_and_renames_across_it_are_add_or_delete(
    repo: WorkRepo, tmp_path: Path
) -> None:
    source = GitSource("handbook", f"file://{repo.path}", subdir="docs/", workdir=tmp_path / "m")
    result, known = first_run(source)
    assert [c.key for c in result.changes] == ["docs/faq.txt", "docs/guide.md", "docs/old.md"]
    repo.move("docs/old.md", "attic/old.md")  # leaves the subdir: a deletion
    repo.move("README.md", "docs/README.md")  # enters it: an addition
    repo.commit("shuffle")
    after = source.changes(result.cursor, known)
    assert summary(after) == [("added", "docs/README.md", None), ("deleted", "docs/old.md", None)]


def test_rename_between_document_and_non_document_paths(repo: WorkRepo, source: GitSource) -> None:
    result, known = first_run(source)
    repo.move("docs/old.md", "docs/old.md.bak")
    repo.move("src/main.py", "docs/main.txt")
    repo.commit("suffixes")
    after = source.changes(result.cursor, known)
    assert summary(after) == [("added", "docs/main.txt", None), ("deleted", "docs/old.md", None)]


def test_include_globs_filter_git_paths(repo: WorkRepo, tmp_path: Path) -> None:
    source = GitSource("handbook", str(repo.path), include=["docs/*.md"], workdir=tmp_path / "m")
    assert [c.key for c in source.changes(None, {}).changes] == ["docs/guide.md", "docs/old.md"]


def test_modification_of_a_path_the_catalog_lacks_becomes_an_addition(
    repo: WorkRepo, source: GitSource
) -> None:
    result, known = first_run(source)
    del known["docs/faq.txt"]  # an earlier run failed to record it
    repo.write("docs/faq.txt", "Edited.\n")
    repo.commit("edit")
    assert summary(source.changes(result.cursor, known)) == [("added", "docs/faq.txt", None)]


def test_reconcile_drops_what_the_catalog_already_holds() -> None:
    known = {"a.md": KnownDocument("a.md", "b1"), "c.md": KnownDocument("c.md", "b3")}
    changes = [
        Change(ChangeKind.ADDED, "a.md", "b1"),  # recorded by the failed run already
        Change(ChangeKind.ADDED, "c.md", "b9"),  # known at another revision
        Change(ChangeKind.DELETED, "gone.md", None),  # never recorded
        Change(ChangeKind.RENAMED, "new.md", "b2", old_key="unknown.md"),
    ]
    assert reconcile(changes, known) == [
        Change(ChangeKind.MODIFIED, "c.md", "b9"),
        Change(ChangeKind.ADDED, "new.md", "b2"),
    ]


def rewrite_history(repo: WorkRepo, remote: Path) -> None:
    """Drop the last commit and push a different one with --force."""
    git(repo.path, "reset", "--quiet", "--hard", "HEAD~1")
    repo.move("docs/guide.md", "docs/manual.md")  # a pure rename
    repo.write("docs/faq.txt", "Rewritten answers.\n")
    repo.remove("docs/old.md")
    repo.commit("rewritten")
    repo.push(force=True)


@pytest.fixture
def published(repo: WorkRepo, tmp_path: Path) -> tuple[WorkRepo, Path]:
    remote = tmp_path / "remote.git"
    repo.publish(remote)
    repo.write("docs/new.md", "Added in the commit that will be rewritten away.\n")
    repo.commit("soon gone")
    repo.push()
    return repo, remote


def expected_after_rewrite() -> list[tuple[str, str, str | None]]:
    return [
        ("modified", "docs/faq.txt", None),
        ("renamed", "docs/manual.md", "docs/guide.md"),
        ("deleted", "docs/new.md", None),
        ("deleted", "docs/old.md", None),
    ]


def test_force_push_with_the_old_commit_still_in_the_mirror_warns_and_diffs_trees(
    published: tuple[WorkRepo, Path], tmp_path: Path
) -> None:
    repo, remote = published
    source = GitSource("handbook", str(remote), workdir=tmp_path / "m")
    result, known = first_run(source)
    rewrite_history(repo, remote)
    after = source.changes(result.cursor, known)
    assert summary(after) == expected_after_rewrite()
    assert after.cursor == GitCursor(repo.head())
    assert (
        len(after.warnings) == 1
        and "rewritten" in after.warnings[0]
        and result.cursor.commit in after.warnings[0]
    )


def test_force_push_with_the_cursor_commit_gone_falls_back_to_full_comparison(
    published: tuple[WorkRepo, Path], tmp_path: Path
) -> None:
    repo, remote = published
    result, known = first_run(GitSource("handbook", str(remote), workdir=tmp_path / "m1"))
    rewrite_history(repo, remote)
    # A fresh mirror (new worker, wiped or gc'd workdir) never holds the rewritten-away commit; file://
    # makes git transfer reachable objects only, where a plain path would copy the whole object store.
    source = GitSource("handbook", f"file://{remote}", workdir=tmp_path / "m2")
    after = source.changes(result.cursor, known)
    assert summary(after) == expected_after_rewrite()
    assert after.cursor == GitCursor(repo.head())
    assert len(after.warnings) == 1
    assert "handbook" in after.warnings[0] and result.cursor.commit in after.warnings[0]
    assert "no longer" in after.warnings[0]


def test_redact_drops_the_whole_userinfo_of_every_url() -> None:
    text = "fatal: 'https://user:p@ss@host/x.git' and git://tok@h/y, not /home/a@b/repo"
    assert redact(text) == "fatal: 'https://host/x.git' and git://h/y, not /home/a@b/repo"


@pytest.mark.parametrize("scheme", ["git", "https"])
def test_unreachable_url_is_a_source_error_without_credentials(scheme: str, tmp_path: Path) -> None:
    url = f"{scheme}://user:secret@127.0.0.1:{free_port()}/x.git"
    with pytest.raises(SourceError) as info:
        GitSource("private", url, workdir=tmp_path / "m").changes(None, {})
    message = str(info.value)
    assert "secret" not in message and "user:" not in message
    assert "private" in message and "127.0.0.1" in message
    assert "secret" not in repr(GitSource("private", url, workdir=tmp_path))


def test_missing_branch_is_a_source_error_naming_it(source: GitSource) -> None:
    source.branch = "release"
    with pytest.raises(SourceError, match="branch 'release' does not exist"):
        source.changes(None, {})


def test_fetch_reads_the_blob_from_the_mirror(repo: WorkRepo, source: GitSource) -> None:
    result, _ = first_run(source)
    readme = next(c for c in result.changes if c.key == "README.md")
    assert source.fetch(readme) == b"# Readme\n"
    with pytest.raises(DocumentFetchError, match="README.md"):
        source.fetch(Change(ChangeKind.ADDED, "README.md", "0" * 40))


def test_git_daemon_clone_then_new_push_is_detected(
    git_daemon: GitDaemon, repo: WorkRepo, tmp_path: Path
) -> None:
    repo.publish(git_daemon.base / "handbook.git")
    source = GitSource("handbook", git_daemon.url("handbook.git"), workdir=tmp_path / "m")
    result, known = first_run(source)
    assert len(result.changes) == 4 and result.cursor == GitCursor(repo.head())
    repo.write("docs/new.md", "Pushed later.\n")
    repo.commit("new page")
    git(repo.path, "push", "--quiet", git_daemon.url("handbook.git"), "main")  # through the daemon
    after = source.changes(result.cursor, known)
    assert summary(after) == [("added", "docs/new.md", None)]
    assert after.cursor == GitCursor(repo.head())
