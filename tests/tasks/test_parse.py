"""Parsing: every supported format to normalised text, offline, with its parser version on record."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from tasks.parse import (
    PARSER_NAME,
    SUPPORTED_SUFFIXES,
    ParseError,
    parse_document,
    parser_version,
)
from tasks.sources.base import DOCUMENT_SUFFIXES
from tests.fixtures.documents import EXAMPLE_FACTS, EXAMPLE_KB, build_docx, build_pdf

REPO = Path(__file__).resolve().parents[2]
UNSTRUCTURED_VERSION = version("unstructured")  # read without importing unstructured (its import phones home)
_OPT_OUTS = ("DO_NOT_TRACK", "SCARF_NO_ANALYTICS", "UNSTRUCTURED_DISABLE_NOTICE", "HF_HUB_OFFLINE")


def _example(name: str) -> bytes:
    return (EXAMPLE_KB / name).read_bytes()


@pytest.mark.parametrize("name", sorted(EXAMPLE_FACTS))
def test_each_example_document_gives_its_sentences_and_title(name):
    sentence, title = EXAMPLE_FACTS[name]
    parsed = parse_document(_example(name), name)
    assert sentence in parsed.text
    assert parsed.title == title
    assert parsed.text.startswith(title)
    assert parsed.parser == PARSER_NAME == "unstructured"
    assert parsed.elements >= 5
    assert parsed.text_sha256 == hashlib.sha256(parsed.text.encode("utf-8")).hexdigest()


def test_example_knowledge_base_has_one_short_document_per_format():
    files = sorted(p for p in EXAMPLE_KB.iterdir() if p.is_file())
    assert sorted(p.suffix for p in files) == [".docx", ".html", ".md", ".pdf", ".txt"]
    for path in files:
        words = len(parse_document(path.read_bytes(), path.name).text.split())
        assert 80 <= words <= 250, f"{path.name} has {words} words"


def test_markdown_markup_is_removed():
    parsed = parse_document(_example("on-call-policy.md"), "on-call-policy.md")
    assert "code name Kestrel." in parsed.text
    assert "internal tool Beacon." in parsed.text
    for markup in ("#", "**", "`", "*Beacon*", "- A Severity"):
        assert markup not in parsed.text


def test_html_tags_styles_scripts_and_entities_are_removed():
    html = (
        b"<html><head><title>Head title</title><style>p { color: red; }</style>"
        b"<script>var tracking = 1;</script></head><body><h1>Fish &amp; Chips</h1>"
        b"<p>The <em>kitchen</em> opens at <b>noon</b>.</p></body></html>"
    )
    parsed = parse_document(html, "menu.html")
    assert parsed.text == "Fish & Chips\n\nThe kitchen opens at noon."
    assert parsed.title == "Fish & Chips"


def test_text_is_nfc_with_whitespace_collapsed_and_one_blank_line_between_elements():
    decomposed = "Cafe\u0301   opens\tat  nine.\n\n\n\n  Closed   on Sundays.  \n"
    parsed = parse_document(decomposed.encode("utf-8"), "hours.txt")
    assert parsed.text == "Caf\u00e9 opens at nine.\n\nClosed on Sundays."


def test_text_sha256_is_stable_across_parses():
    first = parse_document(_example("equipment-booking.pdf"), "equipment-booking.pdf")
    second = parse_document(_example("equipment-booking.pdf"), "equipment-booking.pdf")
    assert first.text_sha256 == second.text_sha256
    assert first == second


def test_same_prose_as_markdown_and_text_gives_the_same_hash():
    prose = (
        b"Hill Farm sells eggs on Saturdays from eight until noon.\n\n"
        b"Each box holds ten eggs and costs four pounds, paid in cash at the gate.\n"
    )
    as_md = parse_document(prose, "eggs.md")
    as_txt = parse_document(prose, "eggs.txt")
    assert as_md.text == as_txt.text
    assert as_md.text_sha256 == as_txt.text_sha256


def test_utf8_bom_and_utf16_text_decode_to_the_same_text():
    text = "Ferry timetable: the first crossing leaves Ardmore at 06:40 every weekday."
    plain = parse_document(text.encode("utf-8"), "ferry.txt")
    assert parse_document(b"\xef\xbb\xbf" + text.encode("utf-8"), "ferry.txt") == plain
    assert parse_document(text.encode("utf-16"), "ferry.txt") == plain


def test_pdf_and_docx_built_in_tmp_parse(tmp_path):
    paragraphs = ["The greenhouse is watered at 7:15 every morning by the night porter, Aldo Brunner."]
    pdf = tmp_path / "greenhouse.pdf"
    pdf.write_bytes(build_pdf("Greenhouse Rota", paragraphs))
    docx = tmp_path / "greenhouse.docx"
    docx.write_bytes(build_docx("Greenhouse Rota", paragraphs))
    for path in (pdf, docx):
        parsed = parse_document(path.read_bytes(), path.name)
        assert parsed.title == "Greenhouse Rota"
        assert parsed.text == "Greenhouse Rota\n\n" + paragraphs[0]


def test_parser_version_records_unstructured_version_and_pdf_strategy():
    pdf = parse_document(_example("equipment-booking.pdf"), "equipment-booking.pdf")
    md = parse_document(_example("on-call-policy.md"), "on-call-policy.md")
    assert pdf.parser_version == parser_version("equipment-booking.pdf") == f"{UNSTRUCTURED_VERSION}/fast"
    assert md.parser_version == parser_version("on-call-policy.md") == f"{UNSTRUCTURED_VERSION}/default"
    assert parser_version() == f"{UNSTRUCTURED_VERSION}/default"


def test_suffix_is_matched_case_insensitively():
    parsed = parse_document(_example("on-call-policy.md"), "ON-CALL.MD")
    assert parsed.title == "Norvale Systems On-Call Policy"


def test_every_suffix_sources_accept_is_supported():
    assert set(DOCUMENT_SUFFIXES) <= set(SUPPORTED_SUFFIXES)


def _parse_error(data: bytes, filename: str) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse_document(data, filename)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"{filename}: ")
    assert info.value.filename == filename
    return info.value


def test_truncated_pdf_raises_parse_error_naming_the_file():
    data = _example("equipment-booking.pdf")
    error = _parse_error(data[: len(data) // 2], "report.pdf")
    assert str(error).startswith("report.pdf: cannot parse PDF: ")
    assert error.__cause__ is not None


def test_non_pdf_bytes_with_pdf_name_raise_parse_error():
    error = _parse_error(b"just some text, not a PDF", "scan.pdf")
    assert str(error) == "scan.pdf: cannot parse PDF: not a PDF file (no %PDF header)"


def test_random_bytes_named_docx_raise_parse_error_naming_the_file():
    error = _parse_error(os.urandom(2048), "notes.docx")
    assert str(error) == "notes.docx: cannot parse DOCX: not a ZIP archive"


def test_error_inside_unstructured_becomes_parse_error_with_cause():
    # A well-formed ZIP whose document part is not XML: python-docx fails inside partition_docx.
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "this is not xml")
    error = _parse_error(out.getvalue(), "broken.docx")
    assert str(error).startswith("broken.docx: cannot parse DOCX: ")
    assert error.__cause__ is not None
    assert "<_io." not in str(error)


def test_unsupported_suffix_raises_parse_error():
    error = _parse_error(b"a,b\n1,2\n", "table.csv")
    assert str(error) == "table.csv: unsupported file type '.csv'"
    assert "(no suffix)" in str(_parse_error(b"text", "README"))


def test_empty_and_blank_documents_raise_parse_error():
    assert str(_parse_error(b"", "empty.md")) == "empty.md: empty file"
    assert str(_parse_error(b"  \n\n\t\n", "blank.txt")) == "blank.txt: no text found"
    assert (
        str(_parse_error(b"<html><body><p> </p></body></html>", "blank.html")) == "blank.html: no text found"
    )


def test_pdf_without_a_text_layer_raises_no_text_found():
    error = _parse_error(build_pdf(None, []), "scanned.pdf")
    assert str(error) == "scanned.pdf: no text found"


def test_undecodable_and_binary_text_raise_parse_error():
    latin1 = "Caf\u00e9 menu: soup of the day".encode("latin-1")
    assert "not valid UTF-8" in str(_parse_error(latin1, "menu.txt"))
    assert "binary content" in str(_parse_error(b"PK\x03\x04\x00\x00binary", "archive.md"))


def test_parsing_opens_no_network_connection_in_process(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for name, (sentence, _) in EXAMPLE_FACTS.items():
        assert sentence in parse_document(_example(name), name).text


# A fresh interpreter, so that the first import of unstructured and the first spaCy model load (the
# places that download or phone home) happen under the guard, with none of the opt-out variables set.
_GUARDED_CHILD = textwrap.dedent(
    """
    import json, os, socket, sys
    from pathlib import Path

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args)[:200])
        raise OSError("network disabled by test")

    def audit(event, args):
        if event in ("socket.connect", "socket.getaddrinfo", "urllib.Request"):
            attempts.append(event)
            raise OSError("network disabled by test")

    socket.socket.connect = socket.socket.connect_ex = refuse
    socket.create_connection = socket.getaddrinfo = refuse
    sys.addaudithook(audit)

    from tasks.parse import parse_document

    texts = {p.name: parse_document(p.read_bytes(), p.name).text for p in map(Path, sys.argv[1:])}
    env = {k: os.environ.get(k) for k in
           ("DO_NOT_TRACK", "SCARF_NO_ANALYTICS", "UNSTRUCTURED_DISABLE_NOTICE", "HF_HUB_OFFLINE")}
    print(json.dumps({"texts": texts, "attempts": attempts, "env": env}))
    """
)


def test_parsing_every_format_in_a_fresh_process_makes_no_network_attempt():
    env = {k: v for k, v in os.environ.items() if k not in _OPT_OUTS}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    files = [str(EXAMPLE_KB / name) for name in sorted(EXAMPLE_FACTS)]
    proc = subprocess.run(
        [sys.executable, "-c", _GUARDED_CHILD, *files],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["attempts"] == []
    assert result["env"] == dict.fromkeys(_OPT_OUTS, "1")
    for name, (sentence, _) in EXAMPLE_FACTS.items():
        assert sentence in result["texts"][name]


def test_importing_the_parser_does_not_import_unstructured_partitioners():
    code = "import sys, tasks.parse; print(sorted(m for m in sys.modules if m.startswith('unstructured')))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.strip() == "[]"
