"""The corpus's sources: which Debian documentation packages, which of their files, and their provenance.

A package is a source only when it is installed (dpkg knows it and its copyright file is there); nothing
is installed here. The licence is read from the machine-readable copyright file (the ``License:`` of
its ``Files: *`` paragraph) and pinned by that file's sha256.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


class CorpusError(RuntimeError):
    """The corpus cannot be built here (a package is missing); ``str()`` is one line saying what to do."""


@dataclass(frozen=True)
class PackageSpec:
    """One Debian package and which of its files are sources.

    ``include`` and ``exclude`` are glob patterns relative to the root (``**`` crosses folders; exclude
    uses fnmatch on the same relative path). ``licence`` is used when the copyright file is not in the
    machine-readable format (python3.11-doc's is free text).
    """

    name: str
    split: str  # "train" or "heldout"
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    licence: str | None = None

    @property
    def copyright_path(self) -> str:
        return f"usr/share/doc/{self.name}/copyright"


_NOISE = ("**/genindex*", "**/search.html", "**/py-modindex.html", "**/_sources/*", "**/_static/*")
DEFAULT_PACKAGES: tuple[PackageSpec, ...] = (
    PackageSpec(
        "postgresql-doc-15",
        "train",
        ("usr/share/doc/postgresql-doc-15/html/*.html",),
        ("*/index.html", "*/bookindex.html"),
    ),
    PackageSpec(
        "python3.11-doc",
        "train",
        ("usr/share/doc/python3.11/html/**/*.html",),
        # index.html pages and contents.html (2.5 MB) are tables of contents; changelog lists bug numbers.
        (*_NOISE, "*/index.html", "*/html/contents.html", "*/whatsnew/changelog.html"),
        licence="PSF-2.0",
    ),
    PackageSpec("git-doc", "train", ("usr/share/doc/git-doc/**/*.html",), ("*/index.html",)),
    PackageSpec(
        "sqlite3-doc",
        "train",
        ("usr/share/doc/sqlite3/**/*.html",),
        # c3ref/ repeats capi3ref.html one function per page; syntax/ holds railroad diagrams.
        ("*/c3ref/*", "*/syntax/*", "*/search.d/*", "*/index.html", "*/sitemap.html", "*/docs.html"),
    ),
    PackageSpec(
        "debian-reference-en",
        "heldout",
        ("usr/share/debian-reference/*.en.html",),
        ("*/index.en.html",),
    ),
    PackageSpec(
        "debian-handbook",
        "heldout",
        ("usr/share/doc/debian-handbook/html/en-US/*.html",),
        ("*/index.html",),
    ),
    PackageSpec(
        "developers-reference",
        "heldout",
        ("usr/share/developers-reference/*.html",),
        # developers-reference.html is the single-page copy of the chapters.
        ("*/index.html", "*/search.html", "*/developers-reference.html"),
    ),
)
SPLIT_RULE = (
    "whole source packages are held out: every document of a package marked 'heldout' (Debian "
    "system-administration and policy manuals) is held out, every other package is train; exact "
    "duplicates are removed across the whole corpus, first occurrence in (package, file, position) "
    "order kept"
)


def apt_install_line(packages: Iterable[PackageSpec] = DEFAULT_PACKAGES) -> str:
    names = " ".join(sorted(p.name for p in packages))
    return f"DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {names}"


@dataclass(frozen=True)
class InstalledPackage:
    spec: PackageSpec
    version: str
    licence: str
    copyright_sha256: str
    files: tuple[str, ...]  # paths relative to the root, sorted


def check_installed(specs: Sequence[PackageSpec], root: Path) -> list[InstalledPackage]:
    """Version, licence and source files of every package; one CorpusError line if any is missing."""
    missing = [s for s in specs if _version(s.name, root) is None or not (root / s.copyright_path).is_file()]
    if missing:
        names = ", ".join(s.name for s in missing)
        raise CorpusError(
            f"corpus source package(s) not installed: {names}; run: {apt_install_line(missing)}"
        )
    return [_installed(spec, root) for spec in specs]


def _installed(spec: PackageSpec, root: Path) -> InstalledPackage:
    copyright_bytes = (root / spec.copyright_path).read_bytes()
    licence = _dep5_licence(copyright_bytes.decode("utf-8", "replace")) or spec.licence
    return InstalledPackage(
        spec=spec,
        version=_version(spec.name, root) or "",
        licence=licence or "unknown (see copyright file)",
        copyright_sha256=hashlib.sha256(copyright_bytes).hexdigest(),
        files=tuple(list_files(spec, root)),
    )


def list_files(spec: PackageSpec, root: Path) -> list[str]:
    """Regular files matching the spec, relative to ``root``, sorted; symlinks are skipped (the same
    text reached twice would only become duplicates)."""
    found: set[str] = set()
    for pattern in spec.include:
        for path in root.glob(pattern):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and not path.is_symlink() and not _excluded(rel, spec.exclude):
                found.add(rel)
    return sorted(found)


def _excluded(rel: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def _version(name: str, root: Path) -> str | None:
    """The installed version per dpkg (``root``'s own dpkg database), or None when not installed."""
    admindir = root / "var" / "lib" / "dpkg"
    try:
        result = subprocess.run(
            ["dpkg-query", f"--admindir={admindir}", "-W", "-f=${db:Status-Abbrev}\\t${Version}", name],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError as exc:  # not a Debian system at all
        raise CorpusError("dpkg-query not found: the corpus is built from Debian packages") from exc
    status, _, version = result.stdout.partition("\t")
    return version.strip() if result.returncode == 0 and status.startswith("ii") else None


_LICENSE = re.compile(r"^License:[ \t]*(\S.*)$", re.MULTILINE)


def _dep5_licence(text: str) -> str | None:
    """The licence of the ``Files: *`` paragraph of a DEP-5 copyright file; None for free text."""
    if not text.startswith("Format:"):
        return None
    for paragraph in re.split(r"\n\s*\n", text):
        if re.search(r"^Files:\s*\*\s*$", paragraph, re.MULTILINE):
            match = _LICENSE.search(paragraph)
            return match.group(1).strip() if match else None
    return None
