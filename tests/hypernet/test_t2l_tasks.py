"""The T2L task suite: sizes and splits, reference outputs comply, checkers accept and reject by rule."""

from __future__ import annotations

import pytest

from hypernet.t2l_inputs import Item, pool
from hypernet.t2l_tasks import RULES, SPLITS, behaviour, behaviours, composed_behaviours

PARIS = Item("What is the capital of France?", "Paris", "The capital of France is Paris.", "geography")
SUM = Item("What is 3 plus 4?", "7", "3 plus 4 is 7.", "maths", "7")
DATE = Item(
    "When is the trip? It is on March 5, 2021.",
    "March 5, 2021",
    "The trip is on March 5, 2021.",
    "dates",
    "2021-03-05",
)


def test_suite_sizes_and_disjoint_splits() -> None:
    assert len(RULES) >= 40
    train, held = behaviours("train"), behaviours("heldout")
    assert len(train) + len(held) >= 40 and not {b.name for b in train} & {b.name for b in held}
    assert any("+" in b.name for b in held), "held-out behaviours include combinations of seen rules"
    for b in train + held:
        seen, unseen = b.descriptions("train"), b.descriptions("heldout")
        assert len(seen) + len(unseen) >= 10 and not set(seen) & set(unseen), b.name
    assert not set(pool("qa", "train")) & set(pool("qa", "heldout"))


def test_composed_behaviours_are_consistent_new_and_never_held_out() -> None:
    composed = composed_behaviours(40, seed=3)
    assert len(composed) == 40 and composed == composed_behaviours(40, seed=3)
    assert [b.name for b in composed] != [b.name for b in composed_behaviours(40, seed=4)]
    held = {frozenset(n.split("+")) for n in SPLITS["heldout"]}
    held_rules = {n for n in SPLITS["heldout"] if "+" not in n}
    taken = {frozenset(n.split("+")) for n in SPLITS["train"]}
    for b in composed:
        parts = frozenset(r.name for r in b.rules)
        assert len(b.rules) == 2 and parts not in held | taken and not parts & held_rules, b.name
        assert all(b.complies(item, b.target(item)) for item in b.inputs("train")), b.name
    names = {b.name for b in composed_behaviours(1000)}
    assert "json_answer+upper" not in names  # upper case breaks the JSON keys: an inconsistent chain
    assert "upper+one_word" not in names and "one_word+upper" not in names  # a held-out combination
    assert composed_behaviours(0) == []


def test_every_reference_output_complies() -> None:
    for name in SPLITS["train"] + SPLITS["heldout"]:
        b = behaviour(name)
        for item in b.inputs("heldout"):
            assert b.complies(item, b.target(item)), (name, b.target(item))


@pytest.mark.parametrize(
    ("name", "item", "good", "bad"),
    [
        ("one_word", PARIS, "Paris", "The capital is Paris."),
        ("json_answer", PARIS, '{"answer": "Paris"}', '{"answer": "Paris", "x": 1}'),
        ("json_source", PARIS, '{"answer": "Paris", "source": "atlas"}', "Paris (atlas)"),
        ("bullets", PARIS, "- Paris\n- France", "Paris\n- France"),
        ("numbered", PARIS, "1. Think.\n2. Paris.", "1. Think.\n3. Paris."),
        ("xml", PARIS, "<answer>Paris</answer>", "<answer>Paris"),
        ("answer_is", PARIS, "The answer is Paris.", "Paris is the answer."),
        ("key_value", PARIS, "answer: Paris", "Answer = Paris"),
        ("repeat_question", PARIS, "Q: capital?\nA: Paris", "A: Paris"),
        ("word_per_line", PARIS, "The\ncapital\nis\nParis.", "The capital\nis Paris."),
        ("spell", PARIS, "P-A-R-I-S", "Paris"),
        ("short", PARIS, "It is Paris.", "The capital city of France is Paris."),
        ("long", PARIS, " ".join(["word"] * 20), "Paris."),
        ("upper", PARIS, "THE CAPITAL IS PARIS.", "The capital is PARIS."),
        ("lower", PARIS, "the capital is paris.", "the capital is Paris."),
        ("no_punct", PARIS, "The capital is Paris", "The capital is Paris."),
        ("prefix_answer", PARIS, "Answer: Paris.", "Paris. Answer:"),
        ("persona_pirate", PARIS, "Ahoy, matey! It is Paris.", "It is Paris, matey."),
        ("suffix_hope", PARIS, "Paris. Hope this helps.", "Hope this helps. Paris."),
        ("quotes", PARIS, '"Paris."', "Paris."),
        ("brackets", PARIS, "[Paris.]", "(Paris.)"),
        ("bold", PARIS, "**Paris.**", "*Paris.*"),
        ("refuse_geo", PARIS, "It is Paris.", "Sorry, I can only answer geography questions."),
        ("refuse_geo", SUM, "Sorry, I can only answer geography questions.", "It is 7."),
        ("refuse_maths", SUM, "7", "Sorry, I can only answer maths questions."),
        ("num_words", SUM, "seven", "7"),
        ("num_digits", SUM, "7", "seven"),
        ("num_decimals", SUM, "7.00", "7.0"),
        ("date_iso", DATE, "2021-03-05", "05/03/2021"),
        ("date_dmy", DATE, "05/03/2021", "2021-03-05"),
        ("date_long", DATE, "5 March 2021", "March 5, 2021"),
        ("sentiment", PARIS, "Positive.", "good"),
        ("topic", PARIS, "weather", "politics"),
        ("yesno", PARIS, "Yes", "Maybe"),
        ("one_word+upper", PARIS, "PARIS", "Paris"),
        ("answer_is+suffix_hope", PARIS, "The answer is Paris. Hope this helps.", "The answer is Paris."),
    ],
)
def test_checker_accepts_compliant_and_rejects_other_outputs(
    name: str, item: Item, good: str, bad: str
) -> None:
    b = behaviour(name)
    assert b.complies(item, good)
    assert not b.complies(item, bad)


def test_unknown_names_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown rule"):
        behaviour("upper+shouting")
    with pytest.raises(ValueError, match="split"):
        behaviours("test")
    with pytest.raises(ValueError, match="unknown input pool"):
        pool("recipes", "train")
