"""Per-document context distillation (CD): train one LoRA so the model answers as if it had read the text.

Teacher = the frozen base model with the document in the user turn before each probe question
(``"{doc}\\n\\n{question}"``); student = the same model with the LoRA and the question only. The loss
is KL(teacher || student) on the answer tokens of the document's own sentence probes. The teacher's
log-probs are computed once, sharing one forward pass over the document prefix across all probes, and
reused for every step. This is the slow, strong generator and the quality baseline for the hypernetwork
(docs/hypernet-design.md: 30 steps close ~0.97 of the gap at ~30 s per document on one CPU thread).

``build_targets`` and ``distill_loss`` are the reusable pieces: the hypernetwork trainer can use the
same teacher targets and loss with generated weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypernet.base_model import BaseModel, chat_ids
from hypernet.batching import pad_id, right_pad, shared_prefix_logprobs
from hypernet.config import CDConfig
from hypernet.lora import LoraWeights, applied, target_linears
from hypernet.probes import Probe, sentence_probes
from hypernet.spans import blank_probes

__all__ = ["CDConfig", "CDError", "CDResult", "DistillTargets", "build_targets", "distill", "distill_loss"]


class CDError(ValueError):
    """The document cannot be distilled (e.g. no usable text); the message says why."""


@dataclass
class DistillTargets:
    """A student batch and the teacher's cached distributions on its answer tokens.

    The M answer tokens are flattened in (probe, position) order: ``predict[i, t]`` is True where
    row i's position t predicts an answer token. ``teacher_logp`` is ``[M, V]`` (full vocabulary) or,
    with top-k, ``[M, k]`` renormalised over ``teacher_idx`` ``[M, k]``.
    """

    input_ids: Tensor  # [N, T] student prompt + answer, right-padded
    attention_mask: Tensor  # [N, T]
    predict: Tensor  # [N, T] bool
    teacher_logp: Tensor  # [M, V] or [M, k]
    teacher_idx: Tensor | None  # [M, k] with top-k, else None

    @property
    def num_answer_tokens(self) -> int:
        return int(self.predict.sum())


@dataclass
class CDResult:
    """What ``distill`` returns; ``losses[0]`` is the KL of the initial adapter (= the base without init)."""

    weights: LoraWeights
    losses: list[float]
    seconds: float
    final_loss: float = math.nan
    probes: list[Probe] = field(default_factory=list)
    doc_tokens: int = 0
    notes: list[str] = field(default_factory=list)


def distill(
    base: BaseModel,
    text: str,
    cfg: CDConfig,
    init: LoraWeights | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> CDResult:
    """Distil ``text`` into a LoRA on ``base`` with a fixed number of AdamW steps.

    Args:
        base: the frozen base model (left unchanged).
        text: the document's normalised text; beyond ``cfg.max_doc_tokens`` it is truncated (see notes).
        cfg: the CD configuration; ``cfg.seed`` fixes the LoRA init and the probe choice.
        init: start from this adapter (its rank and scaling win over ``cfg``), e.g. a generated one.
        progress: called after each step with (step number from 1, loss before that step's update).
    """
    start = time.perf_counter()
    text, doc_tokens, notes = _truncate(base, text, cfg.max_doc_tokens)
    probes = sentence_probes(text, cfg.max_probes, cfg.seed)
    if probes and cfg.blank_probes:
        probes += [Probe(b.question, b.answer) for b in blank_probes(text, cfg.blank_probes, cfg.seed)]
    if not probes:
        raise CDError(f"document has fewer than 6 words ({len(text.split())}): nothing to distil")
    targets = build_targets(base, text, probes, cfg.top_k)
    lora = _trainable_lora(base, cfg, init)
    params = [*lora.A.values(), *lora.B.values()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses = []
    for step in range(1, cfg.steps + 1):
        loss = distill_loss(base.model, lora, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step, losses[-1])
    with torch.no_grad():
        final = distill_loss(base.model, lora, targets).item()
    seconds = time.perf_counter() - start
    return CDResult(lora.detach(), losses, seconds, final, probes, doc_tokens, notes)


def build_targets(base: BaseModel, text: str, probes: list[Probe], top_k: int = 0) -> DistillTargets:
    """Tokenize student prompts and compute the teacher's log-probs on every answer token (no grad)."""
    tok = base.tokenizer
    student = [chat_ids(tok, p.question, p.answer) for p in probes]
    teacher = [chat_ids(tok, f"{text}\n\n{p.question}", p.answer) for p in probes]
    input_ids, mask, predict = right_pad(student, pad_id(tok))
    logp = shared_prefix_logprobs(base.model, teacher, pad_id(tok))
    idx = None
    if top_k:
        vals, idx = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
        logp = vals - vals.logsumexp(-1, keepdim=True)
    dev = base.device
    return DistillTargets(input_ids.to(dev), mask.to(dev), predict.to(dev), logp, idx)


def distill_loss(model: nn.Module, weights: LoraWeights | None, targets: DistillTargets) -> Tensor:
    """Mean over answer tokens of KL(teacher || student), the student being ``model`` with ``weights``.

    ``weights`` may carry a leading batch dimension of N (one adapter per probe row, see ``applied``).
    """
    with applied(model, weights):
        logits = model(
            input_ids=targets.input_ids,
            attention_mask=targets.attention_mask,
            logits_to_keep=targets.predict,
            use_cache=False,
        ).logits  # [M, V]: only the positions that predict answer tokens
    student = F.log_softmax(logits.float(), dim=-1)
    if targets.teacher_idx is None:
        return F.kl_div(student, targets.teacher_logp, log_target=True, reduction="batchmean")
    # top-k: the student is not renormalised, so mass outside the teacher's top-k is penalised too
    student = student.gather(-1, targets.teacher_idx)
    t = targets.teacher_logp
    return (t.exp() * (t - student)).sum(-1).mean()


@torch.no_grad()
def _trainable_lora(base: BaseModel, cfg: CDConfig, init: LoraWeights | None) -> LoraWeights:
    """LoRA parameters on the base model's device: ``init`` copied, or A kaiming-uniform and B zero."""
    dev = base.device
    if init is not None:
        A = {p: nn.Parameter(a.detach().float().clone().to(dev)) for p, a in init.A.items()}
        B = {p: nn.Parameter(b.detach().float().clone().to(dev)) for p, b in init.B.items()}
        return LoraWeights(A, B, init.scaling)
    gen = torch.Generator().manual_seed(cfg.seed)
    A, B = {}, {}
    for path, linear in target_linears(base.model, cfg.target).items():
        a = torch.empty(cfg.rank, linear.in_features)
        nn.init.kaiming_uniform_(
            a, a=math.sqrt(5), generator=gen
        )  # PEFT's default; B = 0 keeps step 0 = base
        A[path] = nn.Parameter(a.to(dev))
        B[path] = nn.Parameter(torch.zeros(linear.out_features, cfg.rank, device=dev))
    return LoraWeights(A, B, cfg.scaling)


def _truncate(base: BaseModel, text: str, max_tokens: int) -> tuple[str, int, list[str]]:
    ids = base.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text, len(ids), []
    note = f"document truncated to its first {max_tokens} of {len(ids)} tokens for distillation"
    return base.tokenizer.decode(ids[:max_tokens]), max_tokens, [note]
