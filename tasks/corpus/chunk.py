"""Turn one parsed documentation page into prose documents of a bounded token length.

The parser's text has one element per blank-line-separated block (a prose paragraph is one line, a code
block many). Blocks are classified as navigation, table of contents, heading or text; headings open
sections; each section's text blocks are packed into chunks of at most ``max_tokens`` (balanced, so a
section is not left with a tiny tail), chunks under ``min_tokens`` are merged into a neighbour, and the
result is filtered for prose. Every dropped piece is counted under a reason.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

CountTokens = Callable[[str], int]


@dataclass(frozen=True)
class ChunkConfig:
    """How text becomes documents, and what is not prose."""

    min_tokens: int = 64
    max_tokens: int = 512
    # Packing aims a little under the limit: joining blocks can merge tokens across the seam.
    pack_margin: int = 8
    # Share of a chunk's characters on code-like lines above which it is dropped. Characters, not lines:
    # the parser puts a whole prose paragraph on one line but a code block on many.
    max_code_share: float = 0.3
    # ... and share of its lines: a long listing between two paragraphs is code-heavy whatever its width.
    max_code_line_share: float = 0.5
    # Share of characters that must be on sentence-like lines (tables and identifier lists are not).
    min_prose_share: float = 0.5
    # A block found in this many files of one package is page furniture (header, footer, licence line).
    repeated_in_files: int = 4


@dataclass(frozen=True)
class Chunk:
    title: str
    text: str
    n_tokens: int


@dataclass
class _Piece:
    title: str
    blocks: list[str]
    tokens: int


def split_blocks(text: str) -> list[str]:
    return [b for b in text.split("\n\n") if b.strip()]


def block_key(block: str) -> str:
    """What makes two blocks 'the same' for duplicate and furniture detection."""
    return " ".join(block.casefold().split())


def chunk_page(
    text: str,
    fallback_title: str,
    count_tokens: CountTokens,
    config: ChunkConfig,
    furniture: frozenset[str] = frozenset(),
    skipped: Counter[str] | None = None,
) -> list[Chunk]:
    """Prose chunks of one page, in page order; what is dropped is counted in ``skipped``."""
    skipped = skipped if skipped is not None else Counter()
    sections = _sections(split_blocks(text), fallback_title, furniture, skipped)
    budget = config.max_tokens - config.pack_margin
    pieces: list[_Piece] = []
    for title, blocks in sections:
        pieces.extend(_pack(title, _fit_blocks(blocks, count_tokens, budget, skipped), budget))
    pieces = _merge_short(pieces, config.min_tokens, budget)
    chunks: list[Chunk] = []
    for piece in pieces:
        reason = _reject(piece, config)
        if reason is None:
            reason = _measured(piece, count_tokens, config, chunks)
        if reason is not None:
            skipped[reason] += 1
    return chunks


def _measured(piece: _Piece, count_tokens: CountTokens, config: ChunkConfig, out: list[Chunk]) -> str | None:
    """Count the piece's exact tokens; keep it (halved at a block boundary when the estimate was
    short of the truth, which happens where joined blocks tokenize differently) or say why not."""
    text = "\n\n".join(piece.blocks)
    n_tokens = count_tokens(text)
    if config.min_tokens <= n_tokens <= config.max_tokens:
        out.append(Chunk(piece.title, text, n_tokens))
        return None
    if n_tokens > config.max_tokens and len(piece.blocks) > 1:
        half = len(piece.blocks) // 2
        reasons = [
            _measured(_Piece(piece.title, blocks, 0), count_tokens, config, out)
            for blocks in (piece.blocks[:half], piece.blocks[half:])
        ]
        return next((r for r in reasons if r is not None), None)
    return "too_short" if n_tokens < config.min_tokens else "too_long"


# --- blocks and sections -------------------------------------------------------------------------

_NAV_WORDS = frozenset(
    re.findall(
        r"\w+",
        "navigation index modules next previous prev up home contents search theme auto light dark "
        "table of contents this page show source report a bug quick search python logo",
    )
)
_SECTION_NUMBER = re.compile(r"^(?:[A-Z]|[IVXLC]+|\d+)(?:\.\d+)*\.\s+\S")  # "9.3.6. ", "F.1. "
_TOC_ENTRY = re.compile(r"(?:^|\s)(?:[A-Z]|\d+)(?:\.\d+)+\.?\s+[A-Z]")
_SENTENCE_END = (".", ",", ";", ":", "!", "?")


def _sections(
    blocks: list[str], fallback_title: str, furniture: frozenset[str], skipped: Counter[str]
) -> list[tuple[str, list[str]]]:
    """Blocks grouped under their heading; navigation, TOCs and furniture removed."""
    sections: list[tuple[str, list[str]]] = [(fallback_title, [])]
    for block in blocks:
        if block_key(block) in furniture:
            skipped["page_furniture_block"] += 1
        elif _is_navigation(block):
            skipped["navigation_block"] += 1
        elif _is_toc(block):
            skipped["table_of_contents_block"] += 1
        elif _is_table(block):
            skipped["table_block"] += 1
        elif heading := _heading(block):
            sections.append((heading, []))
        else:
            sections[-1][1].append(block)
    return [(title, body) for title, body in sections if body]


def _is_navigation(block: str) -> bool:
    lines = block.splitlines()
    if all(line.rstrip().endswith(("»", "|")) for line in lines):
        return True
    words = re.findall(r"[a-z]+", block.casefold())
    if words and len(words) <= 6 and all(w in _NAV_WORDS for w in words):
        return True
    # PostgreSQL's page header/footer: "<title> Prev Up <chapter> Home Next".
    return len(lines) == 1 and bool(re.search(r"\bPrev\b.*\bUp\b.*\bHome\b.*\bNext$", block))


def _is_toc(block: str) -> bool:
    if block.casefold().startswith(("table of contents", "contents")) and len(block) > 40:
        return True
    return len(_TOC_ENTRY.findall(block)) >= 3


def _is_table(block: str) -> bool:
    """A table comes out of the parser as one long line of cells: many words, hardly any sentence."""
    words = block.split()
    return "\n" not in block and len(words) >= 25 and _sentence_ends(block) < len(words) / 40


def _sentence_ends(line: str) -> int:
    return len(re.findall(r"[.!?:](?:\s|$)", line))


def _heading(block: str) -> str | None:
    """The heading text if the block is a section heading (Sphinx's trailing pilcrow removed).

    Only numbered ("9.3.6. Colorized commands"), pilcrowed (Sphinx) or Title-Case/UPPER-CASE lines
    count: a short unpunctuated line is as often a table header or a sentence cut by markup.
    """
    if "\n" in block or len(block) > 120 or block.rstrip().endswith("§"):  # § ends release-note items
        return None
    pilcrow = block.rstrip().endswith("¶")
    text = block.rstrip("¶ ").strip()
    if not text or len(text.split()) > 16:
        return None
    if pilcrow:  # Sphinx marks every heading and API entry, FAQ questions included ("...?¶")
        return text
    if text.endswith(_SENTENCE_END):
        return None
    if _SECTION_NUMBER.match(text):
        return text
    long_words = [w for w in text.split() if len(w) >= 4 and w[0].isalpha()]
    if (
        len(text.split()) >= 2
        and long_words
        and sum(w[0].isupper() for w in long_words) / len(long_words) >= 0.6
    ):
        return text
    return None


# --- packing -------------------------------------------------------------------------------------

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


def _fit_blocks(
    blocks: list[str], count_tokens: CountTokens, budget: int, skipped: Counter[str]
) -> list[tuple[str, int]]:
    """Blocks with their token counts; a block over the budget is cut at sentences (or lines)."""
    fitted = []
    for block in blocks:
        tokens = count_tokens(block)
        if tokens <= budget:
            fitted.append((block, tokens))
            continue
        parts = _SENTENCE_SPLIT.split(block) if "\n" not in block else block.splitlines()
        for part in _regroup(parts, count_tokens, budget):
            if part[1] <= budget:
                fitted.append(part)
            else:
                skipped["oversized_sentence"] += 1
    return fitted


def _regroup(parts: list[str], count_tokens: CountTokens, budget: int) -> list[tuple[str, int]]:
    """Consecutive sentences (or lines) rejoined into pieces up to the budget."""
    sep = " " if len(parts) > 1 and "\n" not in parts[0] else "\n"
    out: list[tuple[str, int]] = []
    for part in parts:
        tokens = count_tokens(part)
        if out and out[-1][1] + tokens + 1 <= budget:
            out[-1] = (out[-1][0] + sep + part, out[-1][1] + tokens + 1)
        else:
            out.append((part, tokens))
    return out


def _pack(title: str, blocks: list[tuple[str, int]], budget: int) -> list[_Piece]:
    """A section's blocks in consecutive pieces of roughly equal size, none over the budget."""
    total = sum(t for _, t in blocks) + max(0, len(blocks) - 1)
    if not blocks:
        return []
    target = total / max(1, math.ceil(total / budget))
    pieces = [_Piece(title, [], 0)]
    for block, tokens in blocks:
        current = pieces[-1]
        grown = current.tokens + tokens + (1 if current.blocks else 0)
        if current.blocks and (grown > budget or current.tokens >= target):
            pieces.append(_Piece(title, [block], tokens))
        else:
            current.blocks.append(block)
            current.tokens = grown
    return pieces


def _merge_short(pieces: list[_Piece], min_tokens: int, budget: int) -> list[_Piece]:
    """Pieces under ``min_tokens`` joined to the next piece (else the previous) when that fits.

    Short sections (a one-paragraph subsection) are common in reference manuals; joined to their
    neighbour they still read as one passage. The merged piece keeps the larger part's title.
    """
    out: list[_Piece] = []
    carry: _Piece | None = None
    for piece in pieces:
        if carry is not None:
            if carry.tokens + piece.tokens + 1 <= budget:
                piece = _join(carry, piece)
            else:
                out.append(carry)  # too big to join forward; _merge_backward tries the previous one
            carry = None
        if piece.tokens < min_tokens:
            carry = piece  # a joined piece may still be short: it keeps travelling forward
        else:
            out.append(piece)
    if carry is not None:
        out.append(carry)
    return _merge_backward(out, min_tokens, budget)


def _merge_backward(pieces: list[_Piece], min_tokens: int, budget: int) -> list[_Piece]:
    out: list[_Piece] = []
    for piece in pieces:
        if out and piece.tokens < min_tokens and out[-1].tokens + piece.tokens + 1 <= budget:
            out[-1] = _join(out[-1], piece)
        else:
            out.append(piece)
    return out


def _join(a: _Piece, b: _Piece) -> _Piece:
    title = a.title if a.tokens >= b.tokens else b.title
    return _Piece(title, a.blocks + b.blocks, a.tokens + b.tokens + 1)


# --- prose filter --------------------------------------------------------------------------------

_CODE_START = re.compile(
    r"^(?:\$ |% |# |>>> |\.\.\. |=[#>] |\w+=[#>] |#include|#define|def |class \w+[:(]|import \w|"
    r"from \S+ import|return\b|if ?\(|for ?\(|while ?\(|[{}()\[\]]|//|/\*|\*/|-- |@\w|<\w+[ >])"
)
_SQL_START = re.compile(
    r"^(?:SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|GRANT|REVOKE|BEGIN|COMMIT|WITH|FROM|WHERE|"
    r"VALUES|SET|ORDER BY|GROUP BY|RETURNS|LANGUAGE|AS)\b"
)
_SYMBOLS = frozenset("{}[]()<>=;*&|\\$#@~`^_/")


def is_code_line(line: str) -> bool:
    s = line.strip()
    if not s:
        return False
    if _CODE_START.match(s) or _SQL_START.match(s):
        return True
    if s.endswith((";", "{", "}", "(")) or (s.endswith(")") and len(s.split()) <= 4):
        return True
    if sum(c in _SYMBOLS for c in s) / len(s) > 0.12:
        return True
    words = s.split()
    # An identifier or call on its own ("complex_in(PG_FUNCTION_ARGS)", "git-log --oneline").
    return len(words) <= 3 and not s.endswith(_SENTENCE_END) and any(c in s for c in "()=_/;")


def is_prose_line(line: str) -> bool:
    words = line.split()
    if len(words) < 6 or is_code_line(line):
        return False
    alphabetic = sum(1 for w in words if re.fullmatch(r"[\"'(]?[A-Za-z][A-Za-z'’-]*[.,;:!?)\"']*", w))
    return alphabetic / len(words) >= 0.6 and bool(re.search(r"[.!?:]", line))


def _reject(piece: _Piece, config: ChunkConfig) -> str | None:
    lines = [line for block in piece.blocks for line in block.splitlines()]
    total = sum(len(line) for line in lines) or 1
    code = [line for line in lines if is_code_line(line)]
    if sum(map(len, code)) / total > config.max_code_share:
        return "code_heavy"
    if len(code) / max(1, len(lines)) > config.max_code_line_share:
        return "code_heavy"
    if sum(len(line) for line in lines if is_prose_line(line)) / total < config.min_prose_share:
        return "not_prose"
    return None


def furniture_blocks(pages: Iterable[list[str]], min_files: int) -> frozenset[str]:
    """Keys of blocks that occur in at least ``min_files`` pages: headers, footers, notices."""
    seen: Counter[str] = Counter()
    for blocks in pages:
        seen.update({block_key(b) for b in blocks})
    return frozenset(key for key, n in seen.items() if n >= min_files)
