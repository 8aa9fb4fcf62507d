"""Git source: the documents of one branch, read from a bare mirror kept under a work directory.

The cursor is the commit last processed (``GitCursor``); a document's revision is its blob id. Changes
come from a tree diff with rename detection between the cursor and the branch head, or from comparing
the head tree with the catalog when there is no usable cursor.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, ClassVar

from tasks.sources.base import (
    Change,
    ChangeKind,
    ChangeSet,
    Cursor,
    DocumentFetchError,
    KnownDocument,
    Source,
    SourceError,
    compare_with_known,
    is_selected,
    redact,
    sort_changes,
)

if TYPE_CHECKING:
    from tasks.settings import GitSourceConfig, Settings

_OBJECT_ID = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")
_FILE_MODES = ("100644", "100755")  # symlinks (120000) and submodules (160000) are not documents


def _git_env() -> dict[str, str]:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="", LC_ALL="C")
    # Never wait for a password: a missing credential must fail, not hang a scheduled run.
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    return env


@dataclass(frozen=True)
class GitCursor(Cursor):
    """The commit of the branch last processed."""

    commit: str


@dataclass(frozen=True)
class RawDiffEntry:
    """One record of ``git diff-tree --raw``: modes, blob ids, status letter and paths."""

    status: str
    old_mode: str
    new_mode: str
    old_blob: str
    new_blob: str
    old_path: str
    new_path: str


def parse_raw_diff(out: bytes) -> list[RawDiffEntry]:
    """Parse ``git diff-tree -r -z --raw`` output (renames and copies carry two paths)."""
    fields = out.split(b"\0")
    entries: list[RawDiffEntry] = []
    i = 0
    while i < len(fields) and fields[i].startswith(b":"):
        old_mode, new_mode, old_blob, new_blob, status = fields[i][1:].decode().split(" ")
        two_paths = status[0] in "RC"
        old_path = fields[i + 1].decode("utf-8", "replace")
        new_path = fields[i + 2].decode("utf-8", "replace") if two_paths else old_path
        entries.append(RawDiffEntry(status, old_mode, new_mode, old_blob, new_blob, old_path, new_path))
        i += 3 if two_paths else 2
    return entries


def reconcile(changes: list[Change], known: Mapping[str, KnownDocument]) -> list[Change]:
    """Make incremental changes agree with the catalog.

    The cursor only moves after a whole run is recorded, so after a failed run the diff repeats what
    the catalog already partly holds, and the catalog may lack what an earlier run failed to record.
    Hence: a change for a path the catalog does not know is an addition (a rename from an unknown
    path too), a deletion of an unknown path is nothing, and an addition or modification the catalog
    already holds at this revision is dropped.
    """
    out: list[Change] = []
    for change in changes:
        if change.kind is ChangeKind.RENAMED and change.old_key not in known:
            change = Change(ChangeKind.ADDED, change.key, change.revision)
        doc = known.get(change.key)
        if change.kind is ChangeKind.DELETED:
            if doc is not None:
                out.append(change)
        elif change.kind is ChangeKind.RENAMED:
            out.append(change)
        elif doc is None:
            out.append(replace(change, kind=ChangeKind.ADDED))
        elif doc.revision != change.revision:
            out.append(replace(change, kind=ChangeKind.MODIFIED))
    return out


@dataclass
class GitSource(Source):
    """Documents of ``branch`` of the repository at ``url`` (a local path, file://, git:// or http(s) URL).

    Keys are POSIX paths from the repository root, limited to ``subdir`` and the ``include`` globs.
    The bare mirror lives in ``workdir``, named after the URL without credentials so that a rotated
    token keeps the same mirror.
    """

    name: str
    url: str = field(repr=False)  # may carry credentials
    branch: str = "main"
    subdir: str = ""
    include: list[str] | None = None
    workdir: Path = field(kw_only=True)
    timeout_s: float = field(default=600.0, kw_only=True)
    kind: ClassVar[str] = "git"
    cursor_type: ClassVar[type[Cursor] | None] = GitCursor

    @classmethod
    def from_config(cls, cfg: GitSourceConfig, settings: Settings) -> GitSource:
        return cls(
            cfg.name,
            cfg.url,
            branch=cfg.branch,
            subdir=cfg.subdir,
            include=cfg.include,
            workdir=settings.git_dir,
        )

    @property
    def display_url(self) -> str:
        return redact(self.url)

    @property
    def mirror(self) -> Path:
        digest = hashlib.sha256(self.display_url.encode()).hexdigest()[:16]
        return Path(self.workdir) / f"{digest}.git"

    def changes(self, cursor: GitCursor | None, known: Mapping[str, KnownDocument]) -> ChangeSet:
        self._sync()
        head = self._head()
        if cursor is not None and cursor.commit == head:
            return ChangeSet([], cursor=cursor)
        warnings: list[str] = []
        last = cursor.commit if cursor else None
        if last is not None and self._has_commit(last):
            if not self._is_ancestor(last, head):
                warnings.append(
                    f"git source {self.name!r}: branch {self.branch!r} was rewritten (the last processed "
                    f"commit {last} is not an ancestor of {head}); changes are the difference of the trees."
                )
            changes = reconcile(self._diff(last, head), known)
        else:
            if last is not None:
                warnings.append(
                    f"git source {self.name!r}: the last processed commit {last} is no longer in "
                    f"{self.display_url} (history rewritten or garbage-collected); compared the whole tree "
                    f"of {self.branch!r} at {head} with the catalog instead."
                )
            changes = compare_with_known(self._tree(head), known, lambda d: d.revision)
        return ChangeSet(sort_changes(changes), cursor=GitCursor(head), warnings=warnings)

    def fetch(self, change: Change) -> bytes:
        if change.revision is None or not _OBJECT_ID.match(change.revision):
            raise DocumentFetchError(self.name, change.key, f"not a blob id: {change.revision!r}")
        if not (self.mirror / "HEAD").exists():
            self._sync()
        rc, out, err = self._run(["cat-file", "blob", change.revision], check=False)
        if rc != 0:
            raise DocumentFetchError(self.name, change.key, redact(err).strip() or f"git exit status {rc}")
        return out

    # -- git plumbing ------------------------------------------------------------------------------

    def _sync(self) -> None:
        """Clone the bare mirror on first use, else force-fetch every branch (picks up rewritten history)."""
        if (self.mirror / "HEAD").exists():
            self._run(["fetch", "--prune", "--quiet", "--", self.url, "+refs/heads/*:refs/heads/*"])
            return
        # Clone beside the final place and rename: an interrupted clone never looks like a mirror.
        tmp = self.mirror.with_name(f"{self.mirror.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self.mirror.parent.mkdir(parents=True, exist_ok=True)
            self._run(["clone", "--bare", "--quiet", "--", self.url, str(tmp)], in_mirror=False)
            os.replace(tmp, self.mirror)
        except OSError as err:
            if not (self.mirror / "HEAD").exists():  # not another process winning the same race
                raise SourceError(self._message(f"cannot create the mirror {self.mirror}: {err}")) from err
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _head(self) -> str:
        rc, out, _ = self._run(
            ["rev-parse", "--verify", "--quiet", f"refs/heads/{self.branch}^{{commit}}"], check=False
        )
        if rc != 0:
            raise SourceError(self._message(f"branch {self.branch!r} does not exist"))
        return out.decode().strip()

    def _has_commit(self, sha: str) -> bool:
        if not _OBJECT_ID.match(sha):
            return False
        return self._run(["cat-file", "-e", f"{sha}^{{commit}}"], check=False)[0] == 0

    def _is_ancestor(self, old: str, new: str) -> bool:
        return self._run(["merge-base", "--is-ancestor", old, new], check=False)[0] == 0

    def _tree(self, commit: str) -> dict[str, str]:
        """Document path -> blob id for the whole tree of ``commit``."""
        _, out, _ = self._run(["ls-tree", "-r", "-z", "--full-tree", commit])
        docs: dict[str, str] = {}
        for record in out.split(b"\0"):
            meta, _, raw_path = record.partition(b"\t")
            if not raw_path:
                continue
            mode, kind, blob = meta.decode().split(" ")
            path = raw_path.decode("utf-8", "replace")
            if kind == "blob" and mode in _FILE_MODES and self._selected(path):
                docs[path] = blob
        return docs

    def _diff(self, old: str, new: str) -> list[Change]:
        # No pathspec: renames across the subdir boundary must be seen whole, then filtered per side.
        _, out, _ = self._run(["diff-tree", "-r", "-z", "-M", "--no-abbrev", old, new])
        changes: list[Change] = []
        for e in parse_raw_diff(out):
            old_doc = e.old_mode in _FILE_MODES and self._selected(e.old_path)
            new_doc = e.new_mode in _FILE_MODES and self._selected(e.new_path)
            if e.status.startswith("C"):  # copies are not asked for (-C); the source path stays as it is
                old_doc = False
            if old_doc and new_doc and e.status.startswith("R"):
                changes.append(Change(ChangeKind.RENAMED, e.new_path, e.new_blob, old_key=e.old_path))
            elif old_doc and new_doc:  # M, or T between two file modes
                changes.append(Change(ChangeKind.MODIFIED, e.new_path, e.new_blob))
            elif old_doc:
                changes.append(Change(ChangeKind.DELETED, e.old_path, None))
            elif new_doc:
                changes.append(Change(ChangeKind.ADDED, e.new_path, e.new_blob))
        return changes

    def _selected(self, path: str) -> bool:
        prefix = PurePosixPath(self.subdir.strip("/")).as_posix()
        return is_selected(path, self.include, "" if prefix == "." else prefix)

    def _run(self, args: list[str], *, check: bool = True, in_mirror: bool = True) -> tuple[int, bytes, str]:
        """Run git; returns (exit status, stdout, stderr). ``check`` turns a failure into SourceError."""
        git_dir = [f"--git-dir={self.mirror}"] if in_mirror else []
        cmd = ["git", *git_dir, "-c", "core.quotepath=false", *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, env=_git_env(), timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            raise SourceError(self._message(f"git {args[0]} timed out after {self.timeout_s:g} s")) from None
        except FileNotFoundError as err:
            raise SourceError(self._message("the git executable was not found")) from err
        stderr = proc.stderr.decode("utf-8", "replace")
        if check and proc.returncode != 0:
            reason = redact(stderr).strip() or f"exit status {proc.returncode}"
            raise SourceError(self._message(f"git {args[0]} failed: {reason}"))
        return proc.returncode, proc.stdout, stderr

    def _message(self, reason: str) -> str:
        userinfo = self.url.partition("://")[2].partition("/")[0].rpartition("@")[0]
        # Belt and braces: git may echo the credentials in a form redact() misses.
        for secret in (userinfo, userinfo.partition(":")[2]):
            if secret:
                reason = reason.replace(secret, "***")
        return f"git source {self.name!r} ({self.display_url}): {reason}"
