"""Synthetic fact documents: determinism, verbatim answers, curriculum, and a truly held-out split."""

from __future__ import annotations

import pytest

from hypernet.data import (
    FACTS,
    DataConfig,
    curriculum_level,
    make_document,
    make_split,
    student_prompt,
    teacher_prompt,
    text_document,
)


def _docs(split: str, n: int, level: int = 4) -> list:
    return [make_document(0, split, i, level) for i in range(n)]


def test_documents_are_a_pure_function_of_seed_split_index_and_level():
    assert make_document(3, "train", 7, 2) == make_document(3, "train", 7, 2)
    assert make_document(3, "train", 7, 2).text != make_document(4, "train", 7, 2).text
    assert make_split(DataConfig(n_train=20), "train") == make_split(DataConfig(n_train=20), "train")


def test_every_gold_answer_appears_verbatim_in_its_document():
    for doc in _docs("train", 50) + _docs("heldout", 50):
        assert doc.questions
        for q in doc.questions:
            assert q.answer in doc.text
            assert q.fact in FACTS


def test_heldout_entities_and_values_never_occur_in_training():
    train, heldout = _docs("train", 400), _docs("heldout", 200)
    for fact in ["name", *FACTS]:
        seen = {d.facts[fact] for d in train if fact in d.facts}
        unseen = {d.facts[fact] for d in heldout if fact in d.facts}
        assert seen and unseen, fact
        assert not seen & unseen, f"{fact} overlaps: {sorted(seen & unseen)[:5]}"
    heldout_years = {int(d.facts["birth_year"]) for d in heldout if "birth_year" in d.facts}
    assert all(y % 4 == 0 for y in heldout_years)


def test_curriculum_starts_with_one_fact_and_grows():
    assert all(len(d.questions) == 1 and d.text.count(".") == 1 for d in _docs("train", 30, level=1))
    assert min(len(d.questions) for d in _docs("train", 30, level=4)) >= 3
    assert [curriculum_level(p, 3) for p in (0.0, 0.2, 0.4, 0.9)] == [1, 2, 3, 3]
    levels = {d.level for d in make_split(DataConfig(n_train=10, max_level=2), "train")}
    assert levels == {1, 2}


def test_unknown_split_or_level_is_refused_by_name():
    with pytest.raises(ValueError, match="split"):
        make_document(0, "test", 0, 1)
    with pytest.raises(ValueError, match="level"):
        make_document(0, "train", 0, 9)


def test_prompts_put_the_document_only_in_the_teacher_turn():
    doc = make_document(0, "train", 0, 2)
    q = doc.questions[0].text
    assert doc.text not in student_prompt(q)
    assert teacher_prompt(doc.text, q).startswith(doc.text) and teacher_prompt(doc.text, q).endswith(
        student_prompt(q)
    )


def test_text_document_probes_ask_for_a_verbatim_continuation():
    text = (
        "The harbour of Alder Bay freezes every winter without fail. "
        "Boats are pulled onto the shore in early November each year. "
        "A railway line reached the town in 1907 after long delays."
    )
    doc = text_document("real-1", text, n_probes=2)
    assert len(doc.questions) == 2
    for q in doc.questions:
        prefix = q.text.split(": ", 1)[1]
        assert f"{prefix} {q.answer}" in text
