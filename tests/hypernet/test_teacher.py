"""The in-context teacher: one pass over the document for all its questions, rows selectable per question."""

from __future__ import annotations

import dataclasses

import torch

from hypernet.base_model import chat_ids
from hypernet.batching import pad_id
from hypernet.data import DataConfig, make_split, teacher_prompt
from hypernet.teacher import TeacherCache, answer_logprobs, make_batch


def _doc_with_questions(n: int):
    docs = make_split(DataConfig(n_train=40, max_level=4), "train")
    return next(d for d in docs if len(d.questions) >= n)


def test_shared_prefix_teacher_equals_one_full_pass_per_question(tiny_base):
    doc = _doc_with_questions(3)
    teacher = TeacherCache(tiny_base, top_k=8, cache_dir=None).get(doc)
    tok = tiny_base.tokenizer
    gold = []
    for q in doc.questions:  # the slow way: the whole prompt again for every question
        one = dataclasses.replace(doc, questions=(q,))
        batch = make_batch(tok, [one])
        ids, answer = chat_ids(tok, teacher_prompt(doc.text, q.text), q.answer)
        full = torch.tensor([ids + answer])
        with torch.no_grad():
            logits = tiny_base.model(input_ids=full).logits[0, len(ids) - 1 : len(ids) + len(answer) - 1]
        logp = torch.log_softmax(logits.float(), -1)
        gold += logp.gather(1, torch.tensor(answer)[:, None])[:, 0].tolist()
        assert batch.target.tolist() == answer
    assert torch.allclose(teacher.gold_logp, torch.tensor(gold), atol=1e-4)
    assert pad_id(tok) is not None


def test_student_log_probs_are_kept_only_where_answers_are_predicted(tiny_base):
    docs = make_split(DataConfig(n_train=4), "train")[:2]
    batch = make_batch(tiny_base.tokenizer, docs)
    logp = answer_logprobs(tiny_base.model, batch, None)
    assert logp.shape == (batch.target.shape[0], tiny_base.model.config.vocab_size)
    assert int(batch.predict.sum()) == batch.target.shape[0]
