"""The corpus builder on a small fake Debian root: real files, real dpkg-query, real parser."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from tasks.corpus import BuildConfig, ChunkConfig, CorpusError, PackageSpec, build_corpus
from tasks.corpus.__main__ import main
from tasks.corpus.chunk import chunk_page, is_code_line

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = REPO / ".instill" / "models" / "smollm2-135m-instruct"
WORDS = re.findall(
    r"\w+",
    "the server stores each table in a separate file and writes changes to a log before applying "
    "them so that a crash never loses committed data while readers see a consistent snapshot of "
    "rows indexes and catalogs which the planner uses to choose an access path",
)
FOOTER = "Copyright 2024 The Example Project. All rights reserved by the authors of this manual."
SPECS = (
    PackageSpec("alpha-doc", "train", ("usr/share/doc/alpha-doc/html/*.html",), ("*/skip-*.html",)),
    PackageSpec("beta-doc", "heldout", ("usr/share/beta/**/*.html",)),
)
CONFIG = BuildConfig(chunk=ChunkConfig(repeated_in_files=3), progress_every=2)


def _sentence(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(8, 18))
    return " ".join(words).capitalize() + "."


def _page(rng: random.Random, title: str, sections: int) -> str:
    body = [f"<p>{title} Prev Up Chapter 1. Things Home Next</p>", f"<h1>{title}</h1>"]
    for s in range(sections):
        body.append(f"<h2>{s + 1}.{rng.randint(1, 9)}. Section about {rng.choice(WORDS)} {s}</h2>")
        # Paragraph counts vary from one sentence (a short section, merged) to a 600-token section.
        for _ in range(rng.choice([1, 3, 6, 30])):
            body.append("<p>" + " ".join(_sentence(rng) for _ in range(rng.randint(1, 4))) + "</p>")
    code = "\n".join(f"    result_{i} = compute(value_{i}, flags={rng.randint(0, 99)});" for i in range(40))
    body.append("<h2>Example listing</h2><p>For example:</p><pre>" + code + "</pre>")
    body.append(f"<p>{FOOTER}</p>")
    joined = "\n".join(body)
    return f"<html><head><title>{title}</title></head><body>{joined}</body></html>"


def _package(root: Path, name: str, version: str, licence: str, folder: str, pages: int, seed: int) -> None:
    doc = root / "usr/share/doc" / name
    doc.mkdir(parents=True, exist_ok=True)
    (doc / "copyright").write_text(
        f"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        f"Files: *\nCopyright: 2024 Somebody\nLicense: {licence}\n\nFiles: debian/*\nLicense: MIT\n"
    )
    rng = random.Random(seed)
    target = root / folder
    target.mkdir(parents=True, exist_ok=True)
    for i in range(pages):
        (target / f"page{i}.html").write_text(_page(rng, f"{name} page {i}", sections=4))
    status = root / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True, exist_ok=True)
    with status.open("a") as fh:
        fh.write(
            f"Package: {name}\nStatus: install ok installed\nPriority: optional\nSection: doc\n"
            f"Maintainer: Nobody <nobody@example.org>\nArchitecture: all\nVersion: {version}\n"
            f"Description: {name}\n\n"
        )


@pytest.fixture(scope="module")
def count_tokens():
    """The real SmolLM2 tokenizer when the model cache has it, else words (same code path either way)."""
    if (TOKENIZER_DIR / "tokenizer.json").is_file():
        from tasks.corpus import smollm2_token_counter

        return smollm2_token_counter()[1]
    return lambda text: len(text.split())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("root")
    _package(root, "alpha-doc", "1.2-3", "GPL-2+", "usr/share/doc/alpha-doc/html", pages=3, seed=1)
    _package(root, "beta-doc", "7:0.9", "PostgreSQL", "usr/share/beta/en", pages=3, seed=2)
    # Not UTF-8: the parser refuses it, the build counts it and goes on.
    (root / "usr/share/beta/en/broken.html").write_bytes(b"<html><body><p>caf\xe9 \xff\xfe</p></body></html>")
    (root / "usr/share/doc/alpha-doc/html/skip-me.html").write_text("<p>excluded by pattern</p>")
    return root


@pytest.fixture(scope="module")
def built(root, count_tokens, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus")
    manifest = build_corpus(out, SPECS, root, count_tokens, "test-tokenizer", CONFIG)
    return out, manifest


def _documents(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "documents.jsonl").read_text("utf-8").splitlines()]


def test_documents_respect_the_token_range_and_drop_furniture_and_code(built, count_tokens) -> None:
    out, manifest = built
    docs = _documents(out)
    assert len(docs) >= 10
    assert manifest["token_range"] == [64, 512]
    for doc in docs:
        assert 64 <= doc["n_tokens"] <= 512
        assert doc["n_tokens"] == count_tokens(doc["text"])
        assert doc["doc_id"] == f"{doc['package']}:{doc['source_file']}#{doc['doc_id'].rsplit('#')[1]}"
        assert FOOTER not in doc["text"] and "compute(value_" not in doc["text"]
        assert "Prev Up" not in doc["text"] and doc["title"]
    assert manifest["skipped"]["code_heavy"] >= 1
    assert manifest["skipped"]["page_furniture_block"] >= 6
    order = [(d["package"], d["source_file"], int(d["doc_id"].rsplit("#")[1])) for d in docs]
    assert order == sorted(order)


def test_split_is_by_whole_package(built) -> None:
    out, manifest = built
    docs = _documents(out)
    assert {d["package"]: d["split"] for d in docs} == {"alpha-doc": "train", "beta-doc": "heldout"}
    assert manifest["counts"] == {
        "train": sum(d["split"] == "train" for d in docs),
        "heldout": sum(d["split"] == "heldout" for d in docs),
    }
    assert manifest["counts"]["train"] > 0 and manifest["counts"]["heldout"] > 0
    assert "held out" in manifest["split_rule"]


def test_manifest_pins_every_file_by_hash(built, root) -> None:
    out, manifest = built
    assert manifest["documents_sha256"] == hashlib.sha256((out / "documents.jsonl").read_bytes()).hexdigest()
    alpha, beta = manifest["packages"]
    assert (alpha["name"], alpha["version"], alpha["licence"]) == ("alpha-doc", "1.2-3", "GPL-2+")
    assert (beta["name"], beta["version"], beta["licence"], beta["split"]) == (
        "beta-doc",
        "7:0.9",
        "PostgreSQL",
        "heldout",
    )
    per_file = {}
    for package in manifest["packages"]:
        copyright = root / "usr/share/doc" / package["name"] / "copyright"
        assert package["copyright_sha256"] == hashlib.sha256(copyright.read_bytes()).hexdigest()
        for entry in package["files"]:
            assert entry["sha256"] == hashlib.sha256((root / entry["path"]).read_bytes()).hexdigest()
            per_file[entry["path"]] = entry["documents"]
    assert "usr/share/doc/alpha-doc/html/skip-me.html" not in per_file
    counted = {}
    for doc in _documents(out):
        counted[doc["source_file"]] = counted.get(doc["source_file"], 0) + 1
    assert {path: n for path, n in per_file.items() if n} == counted


def test_a_corrupt_file_is_skipped_with_its_reason(built) -> None:
    _, manifest = built
    reason = "unparseable: not valid UTF-8 text (bad byte at offset N)"
    assert manifest["skipped"][reason] == 1
    entry = next(f for p in manifest["packages"] for f in p["files"] if f["path"].endswith("broken.html"))
    assert entry == {"path": entry["path"], "sha256": entry["sha256"], "documents": 0, "skipped": reason}


def test_rebuild_is_byte_identical_with_and_without_the_parse_cache(
    built, root, count_tokens, tmp_path
) -> None:
    out, _ = built
    for folder, cache in ((tmp_path / "cached", True), (tmp_path / "fresh", False)):
        config = BuildConfig(chunk=CONFIG.chunk, cache=cache)
        build_corpus(folder, SPECS, root, count_tokens, "test-tokenizer", config)
        for name in ("documents.jsonl", "manifest.json"):
            assert (folder / name).read_bytes() == (out / name).read_bytes(), (folder, name)
    assert not (tmp_path / "fresh" / "cache").exists()


def test_a_missing_package_fails_with_one_line_naming_it(root, count_tokens, tmp_path) -> None:
    specs = (*SPECS, PackageSpec("gamma-doc", "train", ("usr/share/gamma/*.html",)))
    with pytest.raises(CorpusError) as info:
        build_corpus(tmp_path, specs, root, count_tokens)
    message = str(info.value)
    assert "\n" not in message
    assert "gamma-doc" in message and "alpha-doc" not in message
    assert "apt-get install -y --no-install-recommends gamma-doc" in message
    assert not (tmp_path / "documents.jsonl").exists()


def test_cli_reports_a_missing_package_in_one_line(tmp_path, capsys) -> None:
    assert (
        main(["build", "--root", str(tmp_path), "--out", str(tmp_path / "out"), "--packages", "git-doc"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "git-doc" in err and "apt-get install" in err


def test_chunking_splits_long_sections_and_merges_short_ones() -> None:
    rng = random.Random(3)
    long_section = "\n\n".join(" ".join(_sentence(rng) for _ in range(3)) for _ in range(60))
    short = " ".join(_sentence(rng) for _ in range(2))
    text = f"1.1. Long Part\n\n{long_section}\n\n1.2. Short Part\n\n{short}\n\n1.3. Another Short\n\n{short}x"
    chunks = chunk_page(text, "Page", lambda t: len(t.split()), ChunkConfig())
    assert len(chunks) >= 3
    assert all(64 <= c.n_tokens <= 512 for c in chunks)
    assert chunks[0].title == "1.1. Long Part"
    # The two short sections are joined into one document rather than dropped.
    assert short in chunks[-1].text and short + "x" in chunks[-1].text


def test_code_lines_are_recognised() -> None:
    assert is_code_line("$ pg_ctl -D /usr/local/pgsql/data start")
    assert is_code_line("SELECT * FROM weather WHERE city = 'Hayward';")
    assert is_code_line(">>> factorial(10)")
    assert not is_code_line("The server writes changes to a log before applying them (see below).")


def test_navigation_tables_and_tocs_are_dropped_and_counted() -> None:
    rng = random.Random(4)
    prose = "\n\n".join(" ".join(_sentence(rng) for _ in range(3)) for _ in range(4))
    table = " ".join(f"pkg{i} V:{i} I:{i * 3} {i * 100} tool number {i}" for i in range(10))
    toc = "Table of Contents 1.1. Getting Started 1.2. Basic Usage 1.3. Advanced Topics"
    text = f"Python » 3.11 Documentation »\n\n2.4. Tools Of The Trade\n\n{toc}\n\n{prose}\n\n{table}"
    skipped: Counter[str] = Counter()
    chunks = chunk_page(text, "Page", lambda t: len(t.split()), ChunkConfig(), skipped=skipped)
    assert [c.title for c in chunks] == ["2.4. Tools Of The Trade"]
    assert chunks[0].text == prose
    assert skipped == {"navigation_block": 1, "table_of_contents_block": 1, "table_block": 1}
