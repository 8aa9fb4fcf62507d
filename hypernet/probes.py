"""Probes drawn from a document's own text, for context distillation and the knowledge QA gate.

A probe turns one sentence into a prefix -> continuation question: the question quotes the first half
of the sentence's words and the answer is the rest. Answers are then only recoverable from the
document, which is what an adapter should have absorbed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

QUESTION_PREFIX = "Complete this sentence from the document: "
MIN_WORDS = 6
# Sentence ends, plus blank lines and list/heading line breaks, which end "sentences" in markdown.
_SPLIT = re.compile(r"(?<=[.!?])\s+|\n\s*\n|\n(?=\s*(?:[-*+#|]|\d+[.)])\s)")


@dataclass(frozen=True)
class Probe:
    """A question about a document and its reference answer (teacher-forced, never a full chat)."""

    question: str
    answer: str


def split_sentences(text: str) -> list[str]:
    """Sentences (and markdown lines) of ``text`` with whitespace collapsed, empty ones dropped."""
    parts = (" ".join(p.split()) for p in _SPLIT.split(text))
    return [p for p in parts if p]


def sentence_probes(text: str, max_probes: int = 8, seed: int = 0, max_answer_words: int = 24) -> list[Probe]:
    """Up to ``max_probes`` prefix -> continuation probes, one per sentence of >= 6 words.

    When there are more sentences than probes, the document is cut into ``max_probes`` equal runs of
    sentences and one sentence is drawn from each run (seeded), so probes cover the whole document.
    Answers longer than ``max_answer_words`` are cut there, which bounds the cost per probe.
    Text without such sentences (tables, word lists) falls back to windows of 12 words.
    """
    sentences = [s for s in split_sentences(text) if len(s.split()) >= MIN_WORDS]
    if not sentences:
        words = text.split()
        sentences = [" ".join(words[i : i + 12]) for i in range(0, len(words) - MIN_WORDS + 1, 12)]
    chosen = _spread(sentences, max_probes, random.Random(seed))
    return [_probe(s, max_answer_words) for s in chosen]


def held_out_split(probes: list[Probe], fraction: float) -> tuple[list[Probe], list[Probe]]:
    """Split into (kept, held out): every k-th probe is held out, k = round(1 / fraction).

    With ``fraction`` > 0 at least one probe is held out when there are two or more.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"held_out_split: fraction must be in [0, 1), got {fraction}")
    if fraction == 0 or len(probes) < 2:
        return list(probes), []
    k = max(2, round(1 / fraction))
    held = {i for i in range(len(probes)) if i % k == k - 1} or {len(probes) - 1}
    return [p for i, p in enumerate(probes) if i not in held], [p for i, p in enumerate(probes) if i in held]


def _spread(items: list[str], n: int, rng: random.Random) -> list[str]:
    if len(items) <= n:
        return items
    bounds = [round(i * len(items) / n) for i in range(n + 1)]
    return [items[rng.randrange(lo, hi)] for lo, hi in zip(bounds, bounds[1:], strict=False)]


def _probe(sentence: str, max_answer_words: int) -> Probe:
    words = sentence.split()
    half = len(words) // 2
    return Probe(QUESTION_PREFIX + " ".join(words[:half]), " ".join(words[half : half + max_answer_words]))
