"""The metrics of every evaluation: answer and text NLL, greedy exact match, gap closed, bootstrap CIs.

Training (``hypernet.train``), the generator comparison (``hypernet.generator_eval``) and the QA gates
(``tasks``) all measure through these functions, so a number means the same thing everywhere.

Every measurement runs the frozen base model with an adapter applied through ``hypernet.lora.applied``
(``None`` = the base alone) and without gradients. Prompts are built as in ``hypernet.cd``: the question
alone in the user turn, or ``"{document}\\n\\n{question}"`` when the document is in context, the answer
scored teacher-forced after the assistant header. The QA gates (``tasks.qa``) and the hypernetwork's
evaluation build on these; nothing here knows about the catalog or MLflow.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from functools import cache
from importlib.resources import files

import torch
import torch.nn.functional as F

from hypernet.base_model import BaseModel, chat_ids
from hypernet.batching import pad_id, shared_prefix_logprobs
from hypernet.lora import LoraWeights, applied
from hypernet.probes import Probe

__all__ = [
    "answer_nll",
    "bootstrap_ci",
    "bootstrap_ratio",
    "exact_match",
    "gap_closed",
    "general_texts",
    "greedy_answer",
    "greedy_answers",
    "normalise_answer",
    "per_group_mean",
    "text_nll",
]

PROBE_BATCH = 16  # probes per forward pass: bounds the [answer tokens, vocabulary] log-prob block
TEXT_WINDOW = 256  # tokens per plain-text window in text_nll


@torch.no_grad()
def answer_nll(
    base: BaseModel, probes: Sequence[Probe], weights: LoraWeights | None, context: str | None = None
) -> list[float]:
    """Teacher-forced mean per-token NLL (nats) of each probe's answer, in the order given.

    Args:
        base: the frozen base model.
        probes: questions with reference answers; an answer that tokenizes to nothing is an error.
        weights: the adapter to apply, or None for the base model alone.
        context: the document, put in the user turn before each question (as the CD teacher sees it).
    """
    tok, pad = base.tokenizer, pad_id(base.tokenizer)
    out: list[float] = []
    with applied(base.model, _on_device(weights, base.device)):
        for start in range(0, len(probes), PROBE_BATCH):
            chunk = probes[start : start + PROBE_BATCH]
            seqs = [chat_ids(tok, _user_turn(p.question, context), p.answer) for p in chunk]
            empty = [p.question for p, (_, answer) in zip(chunk, seqs, strict=True) if not answer]
            if empty:
                raise ValueError(f"probe {empty[0]!r} has an empty answer: nothing to score")
            # Shares one forward pass over the common prompt prefix (the document) across the chunk.
            logp = shared_prefix_logprobs(base.model, seqs, pad)  # [answer tokens, V], probe-major
            gold = torch.tensor([t for _, answer in seqs for t in answer], device=logp.device)
            token_nll = -logp.gather(-1, gold[:, None]).squeeze(-1)
            out += [part.mean().item() for part in token_nll.split([len(a) for _, a in seqs])]
    return out


@torch.no_grad()
def text_nll(
    base: BaseModel, texts: Sequence[str], weights: LoraWeights | None, max_tokens: int | None = None
) -> float:
    """Mean per-token NLL (nats) over plain texts, each cut into windows of ``TEXT_WINDOW`` tokens.

    ``max_tokens`` caps the tokens read in total (the first ones, text by text), which bounds the cost.
    """
    tok = base.tokenizer
    windows: list[list[int]] = []
    used = 0
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if max_tokens is not None:
            ids = ids[: max(0, max_tokens - used)]
        used += len(ids)
        windows += [ids[i : i + TEXT_WINDOW] for i in range(0, len(ids), TEXT_WINDOW)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise ValueError("text_nll needs at least one text of two or more tokens")
    total, count = 0.0, 0
    with applied(base.model, _on_device(weights, base.device)):
        for start in range(0, len(windows), PROBE_BATCH):
            batch = windows[start : start + PROBE_BATCH]
            ids, mask = _pad_windows(batch, pad_id(tok))
            ids, mask = ids.to(base.device), mask.to(base.device)
            logits = base.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            total += F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="sum").item()
            count += int((labels != -100).sum())
    return total / count


def greedy_answer(
    base: BaseModel,
    question: str,
    weights: LoraWeights | None,
    max_new_tokens: int = 32,
    context: str | None = None,
) -> str:
    """The greedy answer to ``question`` (``context`` before it when given), special tokens dropped."""
    return greedy_answers(base, [question], weights, max_new_tokens, context)[0]


@torch.no_grad()
def greedy_answers(
    base: BaseModel,
    questions: Sequence[str],
    weights: LoraWeights | None,
    max_new_tokens: int = 32,
    context: str | None = None,
) -> list[str]:
    """Greedy answers to several questions in one batched ``generate`` (prompts padded on the left)."""
    if not questions:
        return []
    tok, pad = base.tokenizer, pad_id(base.tokenizer)
    prompts = [chat_ids(tok, _user_turn(q, context))[0] for q in questions]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=base.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=base.device)
    with applied(base.model, _on_device(weights, base.device)):
        out = base.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=pad,
        )
    return [tok.decode(row[width:], skip_special_tokens=True).strip() for row in out]


def normalise_answer(text: str) -> str:
    """Lower case; punctuation, symbols and control characters become spaces; whitespace collapsed.

    Only letters, digits and combining marks (Unicode classes L*, N*, M*) are kept as they are.
    """
    kept = "".join(c if unicodedata.category(c)[0] in "LNM" else " " for c in text.lower())
    return " ".join(kept.split())


def exact_match(pred: str, gold: str) -> bool:
    """True when the normalised gold answer appears in the normalised prediction as whole words."""
    gold_n = normalise_answer(gold)
    return bool(gold_n) and f" {gold_n} " in f" {normalise_answer(pred)} "


def gap_closed(base_nll: float, adapter_nll: float, in_context_nll: float, min_gain: float = 1e-6) -> float:
    """(base - adapter) / (base - in-context): 0 = the adapter adds nothing, 1 = as good as reading.

    Returns NaN when the document in context improves on the base by less than ``min_gain`` nats (or
    makes it worse): the ratio then measures noise, not knowledge, and callers must say so.
    """
    gain = base_nll - in_context_nll
    if not math.isfinite(gain) or gain < min_gain:
        return math.nan
    return (base_nll - adapter_nll) / gain


def bootstrap_ci(
    values: Sequence[float], n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean; (nan, nan) for no values."""
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level}")
    x = torch.tensor(list(values), dtype=torch.float64)
    if x.numel() == 0:
        return math.nan, math.nan
    gen = torch.Generator().manual_seed(seed)
    means = x[torch.randint(x.numel(), (n, x.numel()), generator=gen)].mean(dim=1)
    tail = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return lo, hi


def bootstrap_ratio(num: torch.Tensor, den: torch.Tensor, seed: int, n_boot: int = 1000) -> dict[str, float]:
    """mean(num) / mean(den) with a 95% percentile bootstrap interval, resampling documents."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(num), (n_boot, len(num)), generator=gen)
    ratios = num[idx].mean(1) / den[idx].mean(1)
    lo, hi = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=ratios.dtype)).tolist()
    return {
        "mean": round((num.mean() / den.mean()).item(), 4),
        "ci_low": round(lo, 4),
        "ci_high": round(hi, 4),
    }


def per_group_mean(values: torch.Tensor, group: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of ``values`` [M] within each of ``n`` groups (``group`` [M] holds each value's group)."""
    zeros = torch.zeros(n, dtype=values.dtype, device=values.device)
    sums = zeros.index_add(0, group, values)
    counts = zeros.index_add(0, group, torch.ones_like(values))
    return sums / counts.clamp(min=1)


@cache
def general_texts() -> tuple[str, ...]:
    """The packaged general-text set (``hypernet/data/general.txt``), one paragraph per item.

    Twelve short paragraphs of everyday English on unrelated topics, written for this project (no third-party
    text), so that preservation measures ordinary language rather than any document's domain.
    """
    raw = files("hypernet").joinpath("data/general.txt").read_text(encoding="utf-8")
    return tuple(p.strip() for p in raw.split("\n\n") if p.strip())


def _user_turn(question: str, context: str | None) -> str:
    return question if context is None else f"{context}\n\n{question}"


def _pad_windows(windows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    for i, w in enumerate(windows):
        ids[i, : len(w)] = torch.tensor(w)
        mask[i, : len(w)] = 1
    return ids, mask


def _on_device(weights: LoraWeights | None, device: str) -> LoraWeights | None:
    """The adapter's tensors on the model's device (a stored adapter is read onto the CPU)."""
    if weights is None:
        return None
    A = {p: a.to(device) for p, a in weights.A.items()}
    B = {p: b.to(device) for p, b in weights.B.items()}
    return LoraWeights(A, B, weights.scaling)
