"""Build ``documents.jsonl`` and ``manifest.json`` from the installed documentation packages.

One process, one pass per package: parse every file (cached by content hash), find the package's page
furniture (blocks repeated across its pages), chunk each page, drop exact duplicates across the whole
corpus, then write both files in a fixed order so a rebuild is byte-identical. A file that cannot be
read or parsed is counted under its reason and the build goes on; a parser that cannot work at all
(``ParserSetupError``) stops it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tasks.corpus.chunk import ChunkConfig, CountTokens, chunk_page, furniture_blocks, split_blocks
from tasks.corpus.sources import (
    DEFAULT_PACKAGES,
    SPLIT_RULE,
    InstalledPackage,
    PackageSpec,
    check_installed,
)
from tasks.parse import ParseError, parse_document, parser_version

FORMAT = 1
DEFAULT_OUT = Path(".instill") / "corpus"
DOCUMENTS = "documents.jsonl"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BuildConfig:
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    cache: bool = True  # parsed text kept under <out>/cache, keyed by the file's sha256
    progress_every: int = 50  # files between progress lines on stderr


@dataclass(frozen=True)
class _Parsed:
    sha256: str
    text: str | None
    title: str | None
    error: str | None  # the skip reason when text is None


def build_corpus(
    out_dir: Path | str = DEFAULT_OUT,
    packages: Sequence[PackageSpec] = DEFAULT_PACKAGES,
    root: Path | str = "/",
    count_tokens: CountTokens | None = None,
    tokenizer_name: str | None = None,
    config: BuildConfig | None = None,
    log: TextIO | None = None,
) -> dict[str, Any]:
    """Write the corpus into ``out_dir``; return the manifest. Raises CorpusError for a missing package."""
    config = config or BuildConfig()
    log = log or sys.stderr
    out_dir, root = Path(out_dir), Path(root)
    installed = sorted(check_installed(packages, root), key=lambda p: p.spec.name)
    if count_tokens is None:
        tokenizer_name, count_tokens = smollm2_token_counter()
    run = _Run(config, count_tokens, out_dir / "cache" if config.cache else None, log, installed)
    entries = [run.package(pkg, root) for pkg in installed]
    documents = b"".join(_jsonl(doc) for doc in run.documents)
    counts = Counter(doc["split"] for doc in run.documents)
    manifest = {
        "format": FORMAT,
        "tokenizer": tokenizer_name or getattr(count_tokens, "__qualname__", "custom"),
        "token_range": [config.chunk.min_tokens, config.chunk.max_tokens],
        "parser": f"unstructured {parser_version('x.html')}",
        "chunking": asdict(config.chunk),
        "split_rule": SPLIT_RULE,
        "packages": entries,
        "counts": {"train": counts["train"], "heldout": counts["heldout"]},
        "documents_sha256": hashlib.sha256(documents).hexdigest(),
        "skipped": dict(sorted(run.skipped.items())),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / DOCUMENTS, documents)
    _write_atomic(out_dir / MANIFEST, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())
    run.progress(final=True)
    return manifest


def smollm2_token_counter() -> tuple[str, CountTokens]:
    """The default base model's tokenizer, from the model cache (converted there once if missing)."""
    from transformers import AutoTokenizer

    from hypernet.base_model import DEFAULT_BASE_MODEL, resolve_base_model

    home = Path(os.environ.get("INSTILL_HOME") or ".instill")
    cache = Path(os.environ.get("INSTILL_MODEL_CACHE") or home / "models")
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_base_model(DEFAULT_BASE_MODEL, cache), local_files_only=True
    )
    backend = tokenizer.backend_tokenizer  # the Rust tokenizer: no length warnings, no Python wrapping
    return DEFAULT_BASE_MODEL, lambda text: len(backend.encode(text, add_special_tokens=False).ids)


class _Run:
    """State of one build: documents so far, skip counts, seen texts, progress."""

    def __init__(
        self,
        config: BuildConfig,
        count_tokens: CountTokens,
        cache: Path | None,
        log: TextIO,
        installed: list[InstalledPackage],
    ) -> None:
        self.config, self.count_tokens, self.cache, self.log = config, count_tokens, cache, log
        self.documents: list[dict[str, Any]] = []
        self.skipped: Counter[str] = Counter()
        self.seen: set[str] = set()
        self.files_total = sum(len(p.files) for p in installed)
        self.files_done = 0
        self.start = time.monotonic()

    def package(self, pkg: InstalledPackage, root: Path) -> dict[str, Any]:
        """Parse and chunk one package; its manifest entry."""
        parsed = {rel: self.parse(root / rel, rel) for rel in pkg.files}
        pages = [split_blocks(p.text) for p in parsed.values() if p.text is not None]
        furniture = furniture_blocks(pages, self.config.chunk.repeated_in_files)
        files = []
        for rel, page in parsed.items():
            entry: dict[str, Any] = {"path": rel, "sha256": page.sha256, "documents": 0}
            if page.text is None:
                entry["skipped"] = page.error
            else:
                entry["documents"] = self.chunk_file(pkg, rel, page, furniture)
            files.append(entry)
        return {
            "name": pkg.spec.name,
            "version": pkg.version,
            "licence": pkg.licence,
            "copyright_sha256": pkg.copyright_sha256,
            "split": pkg.spec.split,
            "documents": sum(f["documents"] for f in files),
            "files": files,
        }

    def chunk_file(self, pkg: InstalledPackage, rel: str, page: _Parsed, furniture: frozenset[str]) -> int:
        assert page.text is not None
        fallback = page.title or Path(rel).stem
        chunks = chunk_page(
            page.text, fallback, self.count_tokens, self.config.chunk, furniture, self.skipped
        )
        kept = 0
        for chunk in chunks:
            key = hashlib.sha256(" ".join(chunk.text.casefold().split()).encode()).hexdigest()
            if key in self.seen:
                self.skipped["duplicate"] += 1
                continue
            self.seen.add(key)
            self.documents.append(
                {
                    "doc_id": f"{pkg.spec.name}:{rel}#{kept}",
                    "package": pkg.spec.name,
                    "source_file": rel,
                    "title": chunk.title,
                    "text": chunk.text,
                    "n_tokens": chunk.n_tokens,
                    "split": pkg.spec.split,
                }
            )
            kept += 1
        return kept

    def parse(self, path: Path, rel: str) -> _Parsed:
        """Parse one file (or read its cached parse); an unusable file becomes a skip reason."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            return self._skip(_Parsed("", None, None, f"unreadable: {exc.strerror or exc}"))
        sha = hashlib.sha256(data).hexdigest()
        cached = self._cache_path(sha, path.suffix)
        result = _read_cache(cached) if cached else None
        if result is None:
            try:
                doc = parse_document(data, path.name)
                result = _Parsed(sha, doc.text, doc.title, None)
            except ParseError as exc:
                # Offsets and numbers differ per file; the reason is counted, so keep its kind only.
                result = _Parsed(
                    sha, None, None, "unparseable: " + re.sub(r"(?<![\w-])\d+(?![\w-])", "N", exc.reason)
                )
            if cached:
                _write_cache(cached, result)
        return self._skip(result)

    def _skip(self, parsed: _Parsed) -> _Parsed:
        if parsed.error:
            self.skipped[parsed.error] += 1
        self.files_done += 1
        if self.files_done % self.config.progress_every == 0:
            self.progress()
        return parsed

    def _cache_path(self, sha: str, suffix: str) -> Path | None:
        if self.cache is None:
            return None
        # The parser version is part of the key: a new unstructured may parse the same bytes differently.
        version = re.sub(r"[^\w.-]", "_", parser_version("x" + suffix))
        return self.cache / version / sha[:2] / f"{sha}{suffix.lower()}.json"

    def progress(self, final: bool = False) -> None:
        elapsed = time.monotonic() - self.start
        rate = self.files_done / elapsed if elapsed else 0.0
        state = "done" if final else "parsed"
        print(
            f"corpus: {self.files_done}/{self.files_total} files {state}, {len(self.documents)} "
            f"documents, {elapsed:.0f} s ({rate:.1f} files/s)",
            file=self.log,
            flush=True,
        )


def _read_cache(path: Path) -> _Parsed | None:
    try:
        return _Parsed(**json.loads(path.read_text("utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _write_cache(path: Path, parsed: _Parsed) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(asdict(parsed), ensure_ascii=False).encode())


def _jsonl(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
