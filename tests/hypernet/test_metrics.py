"""The measurements behind the QA gates: answer and text NLL, greedy answers, exact match, gap, bootstrap."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hypernet.base_model import chat_ids
from hypernet.lora import applied
from hypernet.metrics import (
    PROBE_BATCH,
    answer_nll,
    bootstrap_ci,
    exact_match,
    gap_closed,
    general_texts,
    greedy_answer,
    greedy_answers,
    normalise_answer,
    text_nll,
)
from hypernet.probes import Probe, sentence_probes
from tests.fixtures.qa import DOC_A, DOC_B, answer_adapter, zero_adapter

SHORT = Probe("Who was the chief engineer of the Zorblat protocol?", "Mara Quill")


@pytest.fixture(scope="module")
def probes_a() -> list[Probe]:
    return sentence_probes(DOC_A)


@pytest.fixture(scope="module")
def adapter_a(tiny_base, probes_a):
    # The full stop ends the trained answer: nothing teaches the tiny model to end its turn.
    return answer_adapter(tiny_base, [*probes_a, Probe(SHORT.question, SHORT.answer + ".")])


def naive_nll(base, probe: Probe, weights=None, context: str | None = None) -> float:
    """One probe, one full forward pass, no padding and no shared prefix."""
    user = probe.question if context is None else f"{context}\n\n{probe.question}"
    prompt, answer = chat_ids(base.tokenizer, user, probe.answer)
    ids = torch.tensor([prompt + answer])
    with torch.no_grad(), applied(base.model, weights):
        logits = base.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    return F.cross_entropy(logits, torch.tensor(answer)).item()


def test_answer_nll_equals_one_plain_forward_pass_per_probe(tiny_base, adapter_a) -> None:
    probes = sentence_probes(DOC_A) + sentence_probes(DOC_B)
    probes = (probes * 2)[: PROBE_BATCH + 3]  # more than one batch, answers of different lengths
    for weights, context in [(None, None), (adapter_a, None), (None, DOC_A), (adapter_a, DOC_A)]:
        batched = answer_nll(tiny_base, probes, weights, context)
        expected = [naive_nll(tiny_base, p, weights, context) for p in probes]
        assert batched == pytest.approx(expected, abs=1e-4)


def test_an_adapter_trained_on_the_answers_lowers_their_nll(tiny_base, probes_a, adapter_a) -> None:
    base = answer_nll(tiny_base, probes_a, None)
    adapted = answer_nll(tiny_base, probes_a, adapter_a)
    assert all(a < b - 1.0 for a, b in zip(adapted, base, strict=True))


def test_a_zero_adapter_is_the_base_model(tiny_base, probes_a, adapter_a) -> None:
    zero = zero_adapter(adapter_a)
    assert answer_nll(tiny_base, probes_a, zero) == pytest.approx(answer_nll(tiny_base, probes_a, None))
    texts = general_texts()[:2]
    assert text_nll(tiny_base, texts, zero) == pytest.approx(text_nll(tiny_base, texts, None))


def test_a_probe_without_answer_tokens_is_refused(tiny_base) -> None:
    with pytest.raises(ValueError, match="empty answer"):
        answer_nll(tiny_base, [Probe("What is it?", "")], None)


def test_text_nll_is_the_mean_token_cross_entropy(tiny_base) -> None:
    text = general_texts()[0]
    ids = tiny_base.tokenizer(text, add_special_tokens=False)["input_ids"][:200]
    with torch.no_grad():
        logits = tiny_base.model(input_ids=torch.tensor([ids])).logits[0, :-1]
    expected = F.cross_entropy(logits, torch.tensor(ids[1:])).item()
    assert text_nll(tiny_base, [text], None, max_tokens=200) == pytest.approx(expected, abs=1e-4)
    assert text_nll(tiny_base, [text], None) != pytest.approx(expected, abs=1e-4)  # the cap was applied
    with pytest.raises(ValueError, match="two or more tokens"):
        text_nll(tiny_base, ["", "a"], None)


def test_an_adapter_that_repeats_one_word_raises_general_text_nll(tiny_base, probes_a, adapter_a) -> None:
    texts = general_texts()[:3]
    parrot_probes = [Probe(p.question, " ".join(["the"] * 12)) for p in probes_a]
    parrot = answer_adapter(tiny_base, parrot_probes, steps=20)
    base = text_nll(tiny_base, texts, None)
    assert text_nll(tiny_base, texts, parrot) > 1.1 * base
    assert text_nll(tiny_base, texts, adapter_a) < 1.02 * base  # knowing a document costs little


def test_greedy_answer_gives_the_trained_short_answer(tiny_base, adapter_a) -> None:
    with_adapter = greedy_answer(tiny_base, SHORT.question, adapter_a, max_new_tokens=8)
    without = greedy_answer(tiny_base, SHORT.question, None, max_new_tokens=8)
    assert exact_match(with_adapter, SHORT.answer), with_adapter
    assert not exact_match(without, SHORT.answer), without
    assert greedy_answer(tiny_base, SHORT.question, adapter_a, max_new_tokens=8) == with_adapter


def test_batched_greedy_answers_equal_one_at_a_time(tiny_base, adapter_a) -> None:
    questions = [SHORT.question, "Where?", "In which year was the Zorblat protocol ratified by the town?"]
    for weights, context in [(adapter_a, None), (None, DOC_A)]:
        batched = greedy_answers(tiny_base, questions, weights, 6, context)
        assert batched == [greedy_answer(tiny_base, q, weights, 6, context) for q in questions]
    assert greedy_answers(tiny_base, [], None) == []


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("It was MARA  quill.", "Mara Quill", True),
        ("The answer: 1987!", "1987", True),
        ("in 19875", "1987", False),  # whole words only
        ("Mara", "Mara Quill", False),
        ("anything", "  ", False),  # an empty gold answer matches nothing
        ("Vennholm's harbour", "vennholm s", True),  # punctuation becomes a space on both sides
    ],
)
def test_exact_match_normalises_case_punctuation_and_whitespace(pred: str, gold: str, expected: bool) -> None:
    assert exact_match(pred, gold) is expected


def test_normalise_answer_keeps_only_letters_digits_and_marks() -> None:
    assert normalise_answer("  «Café»,\tNo.\n5 ") == "café no 5"
    assert normalise_answer("Quill\x12chel 5% $3") == "quill chel 5 3"


def test_gap_closed_is_the_fraction_of_the_context_gain_reached() -> None:
    assert gap_closed(5.0, 3.0, 1.0) == pytest.approx(0.5)
    assert gap_closed(5.0, 1.0, 1.0) == pytest.approx(1.0)
    assert gap_closed(5.0, 5.0, 1.0) == 0.0
    assert gap_closed(5.0, 6.0, 1.0) == pytest.approx(-0.25)  # the adapter made it worse
    assert gap_closed(5.0, 0.5, 1.0) == pytest.approx(1.125)  # better than reading the document


def test_gap_closed_is_undefined_when_the_context_does_not_help() -> None:
    assert math.isnan(gap_closed(5.0, 3.0, 5.0))
    assert math.isnan(gap_closed(5.0, 3.0, 6.0))  # the document in context hurts
    assert math.isnan(gap_closed(5.0, 3.0, 4.96, min_gain=0.05))
    assert gap_closed(5.0, 4.98, 4.96, min_gain=0.01) == pytest.approx(0.5)


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_data() -> None:
    gen = torch.Generator().manual_seed(1)
    small = (torch.randn(20, generator=gen) + 2).tolist()
    large = (torch.randn(400, generator=gen) + 2).tolist()
    lo, hi = bootstrap_ci(small)
    assert lo < sum(small) / len(small) < hi
    assert bootstrap_ci(small) == (lo, hi)  # seeded
    assert bootstrap_ci(small, seed=1) != (lo, hi)
    lo2, hi2 = bootstrap_ci(large)
    assert lo2 < 2.0 < hi2 and hi2 - lo2 < (hi - lo) / 2
    assert bootstrap_ci([3.0, 3.0, 3.0]) == pytest.approx((3.0, 3.0))
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_general_text_set_ships_with_the_package() -> None:
    texts = general_texts()
    words = sum(len(t.split()) for t in texts)
    assert len(texts) >= 10 and 1000 <= words <= 2000
    assert all("\n\n" not in t for t in texts)
