"""Knowledge probes on a document's informative spans: cloze, template questions, multiple-choice distractors.

A continuation probe ("complete this sentence", ``hypernet.probes``) is mostly answered by style: any
adapter trained on prose of the same kind lowers its NLL. A knowledge probe asks for what only this
document says: a name, a number, a date, a version, an identifier or a defined term. Each sentence is
scanned for such spans; a *cloze* probe shows the sentence up to the span and expects the span, and a
*template* question is asked where a pattern allows ("When was X released?", "What is X?"). Every probe
keeps its span type, so results can be split by it, and multiple choice draws its wrong answers from
spans of the same type in other documents (``distractors``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from hypernet.probes import QUESTION_PREFIX, split_sentences

SPAN_TYPES = ("date", "version", "number", "identifier", "name", "term")
MIN_PREFIX_WORDS = 4  # a cloze needs some context before the blank
MAX_SPAN_WORDS = 6
MAX_PREFIX_WORDS = 16

_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
# Ordered by priority: the first type that matches a stretch of text claims it.
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "date",
        re.compile(
            rf"\b(?:\d{{4}}-\d{{2}}-\d{{2}}|(?:\d{{1,2}} )?(?:{_MONTHS}),? \d{{4}}|(?:1[5-9]|20)\d\d)\b"
        ),
    ),
    ("version", re.compile(r"\b(?:v|version )?\d+\.\d+(?:\.\d+)*[a-z]?\b", re.IGNORECASE)),
    (
        "identifier",
        re.compile(
            r"(?<![\w.-])(?:--?[a-z][\w-]+|[A-Za-z_]\w*(?:\.\w+)+(?:\(\))?|[a-z]+_\w+(?:\(\))?"
            r"|[a-z]+[A-Z]\w*(?:\(\))?|\w+\(\)|[A-Z][A-Z0-9_]{2,}(?:-\d+)?)(?![\w-])"
        ),
    ),
    (
        "number",
        re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?: ?(?:%|[kKMGT]?B|ms|seconds?|bytes|bits))?(?![\w.])"),
    ),
    ("name", re.compile(r"(?<!^)(?<![.!?] )\b[A-Z][a-z]+(?:[A-Z]\w*)?(?: (?:of |de |von )?[A-Z][\w]+)*")),
]
_TERM = re.compile(
    r"^(?P<x>(?:[Aa]n? |[Tt]he )?[\w.()-]+(?: [\w.()-]+){0,3}) (?P<verb>is|are) (?P<y>(?:an?|the|one) .+)$"
)
_EVENT = re.compile(
    r"(?P<x>[A-Z][\w.+-]*(?: [\w.+-]+){0,4}) (?P<aux>was|were) (?P<verb>released|introduced|added|published|"
    r"founded|created|removed|deprecated|renamed|announced) in (?P<when>(?:version )?[\w.]+(?: \d{4})?)"
)
# Spans that are everywhere carry no document knowledge.
_STOP = {
    "The", "This", "These", "That", "It", "In", "If", "When", "For", "See", "Note", "Each", "An", "A",
    "Some", "All", "Any", "You", "We", "They", "There", "As", "To", "By", "On", "With", "From", "At",
    "However", "Also", "Otherwise", "Thus", "Then", "Unlike", "Because", "Since", "While", "I", "One",
}  # fmt: skip
_ABBREVIATIONS = {"e.g", "i.e", "etc", "cf", "vs", "e.g.", "i.e."}


@dataclass(frozen=True)
class Span:
    type: str
    start: int  # character offsets in the sentence
    end: int

    def text(self, sentence: str) -> str:
        return sentence[self.start : self.end]


@dataclass(frozen=True)
class KnowledgeProbe:
    """A question whose answer is a span of the document; ``kind`` is the span type or a probe style."""

    question: str
    answer: str
    kind: str  # one of SPAN_TYPES, or "continuation"
    style: str  # "cloze" | "template" | "blank"


def find_spans(sentence: str) -> list[Span]:
    """Non-overlapping informative spans of one sentence, in order of position."""
    taken: list[Span] = []
    for kind, pattern in _PATTERNS:
        for m in pattern.finditer(sentence):
            text = m.group(0).strip(" ,")
            if (
                not text
                or text in _STOP
                or text.lower() in _ABBREVIATIONS
                or len(text.split()) > MAX_SPAN_WORDS
            ):
                continue
            start = m.start() + m.group(0).index(text)
            span = Span(kind, start, start + len(text))
            if all(span.end <= s.start or span.start >= s.end for s in taken):
                taken.append(span)
    return sorted(taken, key=lambda s: s.start)


def cloze_probes(sentence: str) -> list[KnowledgeProbe]:
    """One probe per span with enough context before it: the sentence up to the span, the span expected."""
    probes = []
    for span in find_spans(sentence):
        words = sentence[: span.start].split()
        if len(words) < MIN_PREFIX_WORDS:
            continue
        prefix = " ".join(words[-MAX_PREFIX_WORDS:])  # bounds the probe's cost; the clue is nearby
        probes.append(KnowledgeProbe(QUESTION_PREFIX + prefix, span.text(sentence), span.type, "cloze"))
    return probes


def template_probes(sentence: str) -> list[KnowledgeProbe]:
    """Questions where the sentence has a known shape: definitions and dated events."""
    probes = []
    if m := _EVENT.search(sentence):
        when = m.group("when").rstrip(".")
        kind = "date" if re.search(r"\d{4}", when) else "version"
        question = f"When {m.group('aux')} {m.group('x')} {m.group('verb')}?"
        probes.append(KnowledgeProbe(question, when, kind, "template"))
    if (m := _TERM.match(sentence.rstrip("."))) and m.group("x").split()[-1] not in _STOP:
        answer = " ".join(m.group("y").split()[:MAX_SPAN_WORDS])
        subject = re.sub(r"^(An?|The) ", lambda a: a.group(1).lower() + " ", m.group("x"))
        probes.append(KnowledgeProbe(f"What {m.group('verb')} {subject}?", answer, "term", "template"))
    return probes


def knowledge_probes(text: str, max_probes: int = 8, seed: int = 0) -> list[KnowledgeProbe]:
    """Up to ``max_probes`` span probes spread over the document, at most two per sentence, types mixed.

    Deterministic in (text, seed). Sentences are visited in a seeded order and each contributes its
    template question first (when it has one), then one cloze, so a long list of numbers in one sentence
    cannot fill the budget.
    """
    rng = random.Random(f"spans:{seed}")
    sentences = split_sentences(text)
    order = list(range(len(sentences)))
    rng.shuffle(order)
    chosen: list[KnowledgeProbe] = []
    seen_answers: set[str] = set()
    for rounds in range(2):
        for i in order:
            if len(chosen) >= max_probes:
                return chosen
            options = template_probes(sentences[i]) if rounds == 0 else []
            clozes = cloze_probes(sentences[i])
            options += [clozes[rng.randrange(len(clozes))]] if clozes and rounds == 0 else clozes[1:2]
            for probe in options[:1] if rounds else options[:2]:
                key = probe.answer.lower()
                if key not in seen_answers and len(chosen) < max_probes:
                    seen_answers.add(key)
                    chosen.append(probe)
    return chosen


BLANK_PREFIX = "Fill in the blank with the words from the document: "
BLANK = "___"


def blank_probes(text: str, max_probes: int = 8, seed: int = 0) -> list[KnowledgeProbe]:
    """Up to ``max_probes`` fill-in-the-blank probes: a sentence with one informative span blanked out.

    Context distillation trains on these beside the continuation probes, so an adapter stores the
    document's names, numbers and terms with the words on *both* sides of them, not only as the end of a
    half sentence. Their wording differs from the evaluation's cloze (``cloze_probes``: the sentence up to
    the span, no blank, no right context), so a gain there is knowledge, not a learned question format.
    One span per sentence, sentences spread over the document (seeded).
    """
    rng = random.Random(f"blanks:{seed}")
    candidates = []
    for sentence in split_sentences(text):
        spans = [s for s in find_spans(sentence) if len(sentence.split()) >= MIN_PREFIX_WORDS + 2]
        if spans:
            span = spans[rng.randrange(len(spans))]
            shown = sentence[: span.start] + BLANK + sentence[span.end :]
            candidates.append(KnowledgeProbe(BLANK_PREFIX + shown, span.text(sentence), span.type, "blank"))
    if len(candidates) <= max_probes:
        return candidates
    bounds = [round(i * len(candidates) / max_probes) for i in range(max_probes + 1)]
    return [candidates[rng.randrange(lo, hi)] for lo, hi in zip(bounds, bounds[1:], strict=False)]


def distractors(
    probe: KnowledgeProbe, pool: Sequence[KnowledgeProbe], k: int = 3, seed: int = 0
) -> list[str]:
    """``k`` wrong answers of the probe's span type from ``pool`` (other documents' probes).

    Answers equal to the gold one (case and surrounding punctuation ignored) are excluded; falls back to
    any type when the pool has too few of this one. Deterministic in (probe, pool, seed).
    """
    gold = _norm(probe.answer)
    same = sorted({p.answer for p in pool if p.kind == probe.kind and _norm(p.answer) != gold})
    if len(same) < k:
        same = sorted({p.answer for p in pool if _norm(p.answer) != gold})
    if len(same) < k:
        raise ValueError(f"distractors: need {k} other answers in the pool, found {len(same)}")
    rng = random.Random(f"distractors:{seed}:{probe.question}:{probe.answer}")
    return rng.sample(same, k)


def _norm(answer: str) -> str:
    return answer.strip(" .,;:").lower()
