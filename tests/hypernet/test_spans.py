"""Knowledge probes: spans found by type, cloze and template questions, same-type distractors."""

from __future__ import annotations

import pytest

from hypernet.probes import QUESTION_PREFIX
from hypernet.spans import (
    BLANK,
    BLANK_PREFIX,
    KnowledgeProbe,
    blank_probes,
    cloze_probes,
    distractors,
    find_spans,
    knowledge_probes,
    template_probes,
)

TEXT = (
    "PostgreSQL 9.6 was released in September 2016. The default value of shared_buffers is 128MB in most "
    "installations. A tablespace is a location in the file system where the server keeps data files. Use "
    "the --no-sync option to skip waiting for writes; the function pg_dump() then returns at once. Since "
    "2019 the Harbour Office has answered 42 requests a week."
)


def test_spans_are_typed_and_do_not_overlap():
    sentence = "The default value of shared_buffers is 128MB since version 9.6 of PostgreSQL, set in 2016."
    spans = find_spans(sentence)
    found = {(s.type, s.text(sentence)) for s in spans}
    assert {("identifier", "shared_buffers"), ("number", "128MB"), ("date", "2016")} <= found
    assert any(t == "version" and "9.6" in text for t, text in found)
    assert any(t == "name" and text == "PostgreSQL" for t, text in found)
    ordered = sorted((s.start, s.end) for s in spans)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(ordered, ordered[1:], strict=False))


def test_a_sentence_initial_capital_and_common_words_are_not_names():
    spans = find_spans("The server restarts when This happens at night.")
    assert not [s for s in spans if s.type == "name"]


def test_cloze_shows_the_sentence_up_to_the_span_and_expects_the_span():
    probes = cloze_probes("Each frame of the lantern protocol carries 64 bytes of header data.")
    assert (
        KnowledgeProbe(
            QUESTION_PREFIX + "Each frame of the lantern protocol carries", "64 bytes", "number", "cloze"
        )
        in probes
    )


def test_a_span_too_close_to_the_start_gets_no_cloze():
    assert cloze_probes("Tolvern nodes ship pages.") == []


def test_template_questions_for_dated_events_and_definitions():
    event = template_probes("PostgreSQL 9.6 was released in September 2016.")
    assert KnowledgeProbe("When was PostgreSQL 9.6 released?", "September 2016", "date", "template") in event
    term = template_probes("A tablespace is a location in the file system where the server keeps data.")
    assert term[0].question == "What is a tablespace?" and term[0].answer.startswith("a location in")


def test_knowledge_probes_are_deterministic_spread_and_distinct():
    probes = knowledge_probes(TEXT, max_probes=6, seed=3)
    assert probes == knowledge_probes(TEXT, max_probes=6, seed=3)
    assert len(probes) == 6 and len({p.answer.lower() for p in probes}) == 6
    assert len({p.kind for p in probes}) >= 3
    assert all(p.answer in TEXT for p in probes)


def test_distractors_come_from_the_same_span_type_and_never_equal_the_gold():
    pool = knowledge_probes(TEXT, 20) + [
        KnowledgeProbe("q", a, "number", "cloze") for a in ("17", "300 ms", "5%", "128mb")
    ]
    gold = KnowledgeProbe("How big?", "128MB", "number", "cloze")
    wrong = distractors(gold, pool, k=3, seed=1)
    assert len(wrong) == 3 and "128mb" not in {w.lower() for w in wrong}
    assert set(wrong) <= {p.answer for p in pool if p.kind == "number"}
    assert wrong == distractors(gold, pool, k=3, seed=1)
    with pytest.raises(ValueError, match="need 3 other answers"):
        distractors(gold, [gold], k=3)


def test_blank_probes_blank_one_span_per_sentence_and_keep_both_sides():
    probes = blank_probes(TEXT, max_probes=8)
    assert probes and all(p.style == "blank" and p.question.startswith(BLANK_PREFIX) for p in probes)
    for p in probes:
        shown = p.question.removeprefix(BLANK_PREFIX)
        assert shown.count(BLANK) == 1
        restored = shown.replace(BLANK, p.answer)
        assert restored in " ".join(TEXT.split())  # the blank is exactly the answer's place
    restored = {p.question.removeprefix(BLANK_PREFIX).replace(BLANK, p.answer) for p in probes}
    assert len(restored) == len(probes)  # one per sentence
    assert blank_probes(TEXT, max_probes=2, seed=3) == blank_probes(TEXT, max_probes=2, seed=3)
    assert len(blank_probes(TEXT, max_probes=2)) == 2
