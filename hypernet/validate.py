"""Held-out validation while the hypernetwork trains: answer NLL under five conditions, by probe type.

Conditions: the base model alone, the bias LoRA alone (generated part zeroed), the document's own
adapter, another document's adapter (the wrong-document control that exposes a constant adapter), and
the document in context (the teacher). Gap closed = (base - condition) / (base - in context), with a
bootstrap CI over documents; specificity = wrong - own per document and per probe type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hypernet.base_model import BaseModel
from hypernet.data import Document, student_prompt
from hypernet.features import FeatureEncoder
from hypernet.metrics import bootstrap_ratio, exact_match, greedy_answer, per_group_mean
from hypernet.model import Hypernet
from hypernet.teacher import TeacherCache, answer_logprobs, make_batch

CONDITIONS = ("base", "bias", "own", "wrong", "in_context")


@dataclass
class Subject:
    """What validation needs of a training run; ``base_nll`` caches the base model's scores."""

    base: BaseModel
    net: Hypernet
    features: FeatureEncoder
    teacher: TeacherCache
    batch_docs: int
    seed: int = 0
    base_nll: dict[str, float] = field(default_factory=dict)

    def factors(self, docs: list[Document]) -> tuple[Tensor, Tensor]:
        return self.net.document_factors([self.features.encode(d.text) for d in docs])


@torch.no_grad()
def validate(s: Subject, docs: list[Document], label: str, em_docs: int = 0) -> dict[str, Any]:
    """The held-out record for ``docs`` (keys prefixed by nothing; ``set`` names the set)."""
    n, bs = len(docs), s.batch_docs
    nll: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    by_type: dict[str, list[float]] = {}
    adapters = [s.factors(docs[i : i + bs]) for i in range(0, n, bs)]
    for k, start in enumerate(range(0, n, bs)):
        block = docs[start : start + bs]
        partner = docs[(start + bs) % n : (start + bs) % n + 1] or docs[:1]
        per_doc, spec = block_nll(s, block, adapters[k], s.factors(partner) if len(block) == 1 else None)
        for cond in CONDITIONS:
            nll[cond] += per_doc[cond]
        for kind, value in spec:
            by_type.setdefault(kind, []).append(value)
    t = {c: torch.tensor(v, dtype=torch.float64) for c, v in nll.items()}
    gap = t["base"] - t["in_context"]
    record: dict[str, Any] = {"kind": "eval", "set": label, "docs": n}
    record |= {f"nll_{c}": round(t[c].mean().item(), 4) for c in CONDITIONS}
    record["gap_closed"] = bootstrap_ratio(t["base"] - t["own"], gap, s.seed)
    record["gap_closed_bias_only"] = round(((t["base"] - t["bias"]).mean() / gap.mean()).item(), 4)
    record["gap_closed_wrong_doc"] = round(((t["base"] - t["wrong"]).mean() / gap.mean()).item(), 4)
    record["specificity"] = bootstrap_ratio(t["wrong"] - t["own"], torch.ones(n, dtype=torch.float64), 1)
    record["specificity_positive"] = round((t["wrong"] > t["own"]).double().mean().item(), 3)
    record["specificity_by_type"] = {k: round(sum(v) / len(v), 4) for k, v in sorted(by_type.items())}
    if em_docs:
        record["exact_match"] = greedy_exact_match(s, docs[:em_docs])
    return record


def block_nll(
    s: Subject, block: list[Document], factors: tuple[Tensor, Tensor], partner: tuple[Tensor, Tensor] | None
) -> tuple[dict[str, list[float]], list[tuple[str, float]]]:
    """Per-document mean answer NLL of one block under each condition, and per-question wrong - own.

    The wrong-document adapter of document i is that of document (i + 1) in the block (``partner``'s
    first document for a block of one).
    """
    A, B = factors
    dev = s.base.device
    batch = make_batch(s.base.tokenizer, block)
    own = batch.doc.to(dev)
    if partner is not None:  # a block of one: its neighbour comes from the next block
        A, B = _cat_padded(A, partner[0], 2), _cat_padded(B, partner[1], 3)
    D = A.shape[0]
    adapters = {
        "bias": s.net.batch_adapter(None, None, own),
        "own": s.net.batch_adapter(A, B, own),
        "wrong": s.net.batch_adapter(A, B, (own + 1) % D),
    }
    if any(d.doc_id not in s.base_nll for d in block):
        adapters["base"] = None  # the base model never changes: scored once per document
    token_nll = {}
    for cond, adapter in adapters.items():
        logp = answer_logprobs(s.base.model, batch, adapter).cpu()
        token_nll[cond] = -logp.gather(1, batch.target[:, None])[:, 0]
    token_nll["in_context"] = -s.teacher.for_batch(block).gold_logp
    doc_of_token = batch.doc[batch.seq]
    per_doc = {c: per_group_mean(v, doc_of_token, len(block)).tolist() for c, v in token_nll.items()}
    s.base_nll |= dict(zip([d.doc_id for d in block], per_doc.get("base", []), strict=False))
    per_doc["base"] = [s.base_nll[d.doc_id] for d in block]
    per_question = {c: per_group_mean(token_nll[c], batch.seq, len(batch.doc)) for c in ("own", "wrong")}
    kinds = [q.fact for d in block for q in d.questions]
    return per_doc, list(zip(kinds, (per_question["wrong"] - per_question["own"]).tolist(), strict=True))


def _cat_padded(x: Tensor, y: Tensor, rank_dim: int) -> Tensor:
    """Stack two documents' factors whose rank (chunk count) may differ, zero-padding the shorter."""
    width = max(x.shape[rank_dim], y.shape[rank_dim])

    def pad(t: Tensor) -> Tensor:
        shape = list(t.shape)
        shape[rank_dim] = width - t.shape[rank_dim]
        return torch.cat([t, t.new_zeros(shape)], dim=rank_dim)

    return torch.cat([pad(x), pad(y)], dim=0)


def greedy_exact_match(s: Subject, docs: list[Document]) -> dict[str, float]:
    """Greedy answers containing the gold answer, under base / own / wrong adapter / in-context."""
    hits = {"base": 0, "own": 0, "wrong": 0, "in_context": 0}
    adapters = [s.net.generate(s.features.encode(d.text)) for d in docs]
    total = 0
    for i, d in enumerate(docs):
        for q in d.questions:
            question = student_prompt(q.text)
            answers = {
                "base": greedy_answer(s.base, question, None, 16),
                "own": greedy_answer(s.base, question, adapters[i], 16),
                "wrong": greedy_answer(s.base, question, adapters[(i + 1) % len(docs)], 16),
                "in_context": greedy_answer(s.base, question, None, 16, context=d.text),
            }
            total += 1
            for cond, text in answers.items():
                hits[cond] += exact_match(text, q.answer)
    return {c: round(h / max(total, 1), 4) for c, h in hits.items()} | {"questions": total}
