"""LocalFolderSource against real folders in tmp dirs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import tasks.sources.local as local_module
from tasks.sources.base import (
    Change,
    ChangeKind,
    KnownDocument,
    SourceError,
    StaleRevisionError,
    glob_regex,
    is_selected,
    pair_renames,
)
from tasks.sources.local import LocalFolderSource


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def known_from(changes: list[Change]) -> dict[str, KnownDocument]:
    """What the catalog would hold after recording ``changes`` on an empty catalog."""
    return {c.key: KnownDocument(c.key, c.revision, raw_sha256=c.revision) for c in changes}


def summary(changes: list[Change]) -> list[tuple[str, str, str | None]]:
    return [(c.kind.value, c.key, c.old_key) for c in changes]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    write(root, "a.md", "alpha")
    write(root, "guide/b.txt", "beta")
    write(root, "guide/c.html", "<p>gamma</p>")
    return root


def test_first_run_lists_every_document_as_added_with_its_sha256(folder: Path) -> None:
    result = LocalFolderSource("notes", folder).changes(None, {})
    assert summary(result.changes) == [
        ("added", "a.md", None),
        ("added", "guide/b.txt", None),
        ("added", "guide/c.html", None),
    ]
    assert result.changes[0].revision == sha("alpha")
    assert result.cursor is None
    assert result.warnings == []


def test_unchanged_folder_gives_no_changes(folder: Path) -> None:
    source = LocalFolderSource("notes", folder)
    known = known_from(source.changes(None, {}).changes)
    assert source.changes(None, known).changes == []


def test_edit_add_and_delete_are_reported_sorted_by_kind_then_key(folder: Path) -> None:
    source = LocalFolderSource("notes", folder)
    known = known_from(source.changes(None, {}).changes)
    write(folder, "guide/b.txt", "beta v2")
    write(folder, "z-new.md", "zeta")
    write(folder, "b-new.md", "b new")
    (folder / "guide/c.html").unlink()
    changes = source.changes(None, known).changes
    assert summary(changes) == [
        ("added", "b-new.md", None),
        ("added", "z-new.md", None),
        ("modified", "guide/b.txt", None),
        ("deleted", "guide/c.html", None),
    ]
    assert changes[2].revision == sha("beta v2")
    assert changes[3].revision is None


def test_moved_file_with_same_bytes_is_one_rename(folder: Path) -> None:
    source = LocalFolderSource("notes", folder)
    known = known_from(source.changes(None, {}).changes)
    (folder / "archive").mkdir()
    (folder / "a.md").rename(folder / "archive/a-old.md")
    changes = source.changes(None, known).changes
    assert changes == [Change(ChangeKind.RENAMED, "archive/a-old.md", sha("alpha"), old_key="a.md")]


def test_rename_matches_on_raw_sha256_when_the_revision_differs(folder: Path) -> None:
    known = {"old.md": KnownDocument("old.md", revision="some-older-scheme", raw_sha256=sha("alpha"))}
    (folder / "guide/b.txt").unlink()
    (folder / "guide/c.html").unlink()
    changes = LocalFolderSource("notes", folder).changes(None, known).changes
    assert summary(changes) == [("renamed", "a.md", "old.md")]


def test_renamed_and_edited_file_is_an_addition_and_a_deletion(folder: Path) -> None:
    source = LocalFolderSource("notes", folder)
    known = known_from(source.changes(None, {}).changes)
    (folder / "a.md").rename(folder / "a2.md")
    write(folder, "a2.md", "alpha, edited")
    changes = source.changes(None, known).changes
    assert summary(changes) == [("added", "a2.md", None), ("deleted", "a.md", None)]


def test_identical_copies_pair_one_to_one_in_sorted_order(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    for rel in ("x1.md", "x2.md", "x3.md"):
        write(root, rel, "same")
    source = LocalFolderSource("notes", root)
    known = known_from(source.changes(None, {}).changes)
    for old, new in (("x1.md", "y1.md"), ("x2.md", "y2.md")):
        (root / old).rename(root / new)
    assert summary(source.changes(None, known).changes) == [
        ("renamed", "y1.md", "x1.md"),
        ("renamed", "y2.md", "x2.md"),
    ]


def test_pair_renames_leaves_surplus_paths_unpaired() -> None:
    added_now = {"n1": "h", "n2": "h", "n3": "k"}
    renames, added, deleted = pair_renames(added_now, {"o2": "h", "o1": "h", "o3": "q"})
    assert [(c.key, c.old_key) for c in renames] == [("n1", "o1"), ("n2", "o2")]
    assert added == {"n3": "k"}
    assert deleted == {"o3": "q"}


def test_hidden_dirs_non_documents_and_qa_sidecars_are_ignored(folder: Path) -> None:
    write(folder, ".git/HEAD.md", "not a doc")
    write(folder, ".instill/cache/x.md", "not a doc")
    write(folder, "guide/.#b.md", "editor lock")
    write(folder, "image.png", "binary")
    write(folder, "a.qa.yaml", "qa: []")
    keys = [c.key for c in LocalFolderSource("notes", folder).changes(None, {}).changes]
    assert keys == ["a.md", "guide/b.txt", "guide/c.html"]


def test_include_globs_limit_the_documents(folder: Path) -> None:
    write(folder, "guide/deep/d.md", "delta")
    source = LocalFolderSource("notes", folder, include=["guide/**/*.md", "*.md"])
    keys = [c.key for c in source.changes(None, {}).changes]
    assert keys == ["a.md", "guide/deep/d.md"]


def test_glob_star_stays_in_one_directory_and_double_star_crosses() -> None:
    assert glob_regex("*.md").match("a.md")
    assert not glob_regex("*.md").match("dir/a.md")
    assert glob_regex("**/*.md").match("a.md")
    assert glob_regex("**/*.md").match("x/y/a.md")
    assert glob_regex("docs/**").match("docs/x/y.md")
    assert not is_selected("docs/a.md", ["*.md"], prefix="other")


def test_symlink_pointing_outside_the_folder_is_skipped(folder: Path, tmp_path: Path) -> None:
    write(tmp_path, "outside/secret.md", "secret")
    (folder / "leak.md").symlink_to(tmp_path / "outside/secret.md")
    (folder / "alias.md").symlink_to(folder / "a.md")
    (folder / "linkdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    keys = [c.key for c in LocalFolderSource("notes", folder).changes(None, {}).changes]
    assert "leak.md" not in keys
    assert "linkdir/secret.md" not in keys
    assert "alias.md" in keys


def test_unreadable_known_file_is_kept_with_a_warning_not_deleted(folder: Path, monkeypatch) -> None:
    source = LocalFolderSource("notes", folder)
    known = known_from(source.changes(None, {}).changes)
    (folder / "a.md").chmod(0)
    if os.geteuid() == 0:
        # Root reads files whatever their mode (CI runs as root): fail the read as it would for a user.
        real = local_module.sha256_file

        def denied(path: Path) -> str:
            if path.name == "a.md":
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(local_module, "sha256_file", denied)
    result = source.changes(None, known)
    assert result.changes == []
    assert "a.md" in result.warnings[0]


def test_fetch_returns_the_listed_bytes(folder: Path) -> None:
    source = LocalFolderSource("notes", folder)
    change = source.changes(None, {}).changes[0]
    assert source.fetch(change) == b"alpha"


def test_fetch_of_a_file_edited_since_listing_raises_stale_revision(folder: Path) -> None:
    source = LocalFolderSource("notes", folder)
    change = source.changes(None, {}).changes[0]
    write(folder, "a.md", "alpha, edited meanwhile")
    with pytest.raises(StaleRevisionError, match="a.md") as info:
        source.fetch(change)
    assert info.value.key == "a.md"
    assert info.value.source == "notes"


def test_fetch_refuses_a_key_that_escapes_the_folder(folder: Path, tmp_path: Path) -> None:
    write(tmp_path, "outside.md", "x")
    with pytest.raises(RuntimeError, match="not inside the folder"):
        LocalFolderSource("notes", folder).fetch(Change(ChangeKind.ADDED, "../outside.md", sha("x")))


def test_missing_folder_is_a_source_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SourceError, match="does not exist") as info:
        LocalFolderSource("notes", missing).changes(None, {})
    assert str(missing) in str(info.value)
