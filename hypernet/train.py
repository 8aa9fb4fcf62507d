"""Meta-training of the Doc-to-LoRA hypernetwork: setup -> train -> evaluate -> save.

Student = base model + generated adapter, seeing only the question; teacher = base model with the
document in the prompt. Per batch of documents the loss is

    w_kl * KL(teacher top-k || student) + w_ce * CE(gold answer)            on the own adapter
  + w_margin * mean_docs relu(margin - (CE_shuffled - CE_own))               contrastive margin
  + w_l1 * (mean|A| + mean|B|) + w_shared * shared_fraction(B·A)           on the generated factors

where "shuffled" applies document (i+1)'s adapter to document i's questions in the same forward pass.
Stage 1 (``bias_steps``) trains the bias LoRA alone with KL + CE; stage 2 freezes it and trains the
generated path (see hypernet.model for why). Teacher targets and document features are computed once
and cached, so many epochs cost only student passes.

Evaluation on held-out documents (entities and values never seen in training) reports the answer NLL
under five conditions: base, bias only, own adapter, wrong-document adapter, in-context, and the
fraction of the base -> in-context gap each closes. The wrong-document control is the one that
exposes a constant adapter (research/proto.md). Checkpoints are safetensors + JSON; training resumes
to the identical state because batches are a pure function of (seed, step).

Entry points: ``train(cfg, base, out_dir, log)`` and ``python -m hypernet.train --out runs/NAME``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from hypernet.base_model import BaseModel, chat_ids, load_base_model
from hypernet.corpus import training_documents
from hypernet.data import DataConfig, Document, curriculum_level, make_split, student_prompt, teacher_prompt
from hypernet.evaluate import exact_match as answer_matches
from hypernet.evaluate import greedy_answer
from hypernet.features import FeatureConfig, FeatureEncoder, pad_features
from hypernet.lora import LoraWeights, applied
from hypernet.model import Hypernet, HypernetConfig, load_hypernet, save_hypernet, shared_fraction

Log = Callable[[dict[str, Any]], None]


@dataclass
class TrainConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    net: dict[str, Any] = field(default_factory=dict)  # HypernetConfig overrides (d, rank, ...)
    # schedule
    steps: int = 400  # optimiser steps in all; the cosine schedules span them
    bias_steps: int = 40  # stage 1: the bias LoRA alone, then frozen
    batch_docs: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 10  # per stage
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    # loss
    top_k: int = 16  # teacher log-probs kept per answer token
    w_kl: float = 0.5
    w_ce: float = 0.5
    w_margin: float = 1.0
    margin: float = 1.0  # nats by which the own adapter should beat a shuffled one
    w_l1: float = 1e-3
    w_shared: float = 0.1
    # bookkeeping
    log_every: int = 10
    eval_every: int = 100
    eval_docs: int = 32  # held-out documents in mid-run evaluations (the final one uses all)
    em_docs: int = 16  # held-out documents scored by greedy exact match at the end
    ckpt_every: int = 50
    max_minutes: float | None = None  # wall-clock bound on the training loop; then evaluate and save
    stop_at_step: int | None = None  # stop there (a checkpoint is written); the schedule still spans `steps`
    cache_dir: str | None = None  # features + teacher cache; default: out_dir/cache
    # real text (hypernet.corpus training split) mixed into the training documents, and a warm start
    real_docs: int = 0
    init_from: str | None = None  # a checkpoint dir whose network weights start this run

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        if not 0 <= self.bias_steps < self.steps:
            raise ValueError(
                f"TrainConfig: need 0 <= bias_steps < steps, got {self.bias_steps}, {self.steps}"
            )
        if self.batch_docs < 2:
            raise ValueError("TrainConfig: batch_docs must be >= 2 (the contrastive term shuffles within it)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- batches and targets


@dataclass
class Batch:
    """Questions of several documents as one right-padded student batch."""

    input_ids: Tensor  # [S, T]
    attention_mask: Tensor  # [S, T]
    predict: Tensor  # [S, T] bool: the position predicts an answer token
    target: Tensor  # [M] answer token ids, in (sequence, position) order
    seq: Tensor  # [M] sequence of each answer token
    doc: Tensor  # [S] document (index into the batch's documents) of each sequence

    def doubled(self) -> Batch:
        """The batch twice over (own adapters first, shuffled ones second)."""
        S = self.input_ids.shape[0]
        return Batch(
            self.input_ids.repeat(2, 1),
            self.attention_mask.repeat(2, 1),
            self.predict.repeat(2, 1),
            self.target.repeat(2),
            torch.cat([self.seq, self.seq + S]),
            self.doc.repeat(2),
        )


def make_batch(tokenizer, docs: list[Document], teacher: bool = False) -> Batch:
    """Student prompts (or teacher prompts, with the document) + gold answers of every question."""
    seqs, doc_index = [], []
    for j, d in enumerate(docs):
        for q in d.questions:
            user = teacher_prompt(d.text, q.text) if teacher else student_prompt(q.text)
            seqs.append(chat_ids(tokenizer, user, q.answer))
            doc_index.append(j)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(p) + len(a) for p, a in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    predict = torch.zeros((len(seqs), width), dtype=torch.bool)
    target, seq = [], []
    for i, (prompt, answer) in enumerate(seqs):
        n = len(prompt) + len(answer)
        ids[i, :n] = torch.tensor(prompt + answer)
        mask[i, :n] = 1
        predict[i, len(prompt) - 1 : n - 1] = True
        target += answer
        seq += [i] * len(answer)
    return Batch(ids, mask, predict, torch.tensor(target), torch.tensor(seq), torch.tensor(doc_index))


def answer_logprobs(model: nn.Module, batch: Batch, adapter: LoraWeights | None) -> Tensor:
    """Log-probs ``[M, V]`` at the positions that predict answer tokens."""
    dev = next(model.parameters()).device
    with applied(model, adapter):
        logits = model(
            input_ids=batch.input_ids.to(dev),
            attention_mask=batch.attention_mask.to(dev),
            logits_to_keep=batch.predict.to(dev),
        ).logits  # [M, V]
    return F.log_softmax(logits.float(), dim=-1)


def per_group_mean(values: Tensor, group: Tensor, n: int) -> Tensor:
    """Mean of ``values`` [M] within each of ``n`` groups."""
    zeros = torch.zeros(n, dtype=values.dtype, device=values.device)
    sums = zeros.index_add(0, group, values)
    counts = zeros.index_add(0, group, torch.ones_like(values))
    return sums / counts.clamp(min=1)


@dataclass
class Teacher:
    """The in-context teacher on one document's answer tokens (cached on disk)."""

    topk_ids: Tensor  # [M, k]
    topk_logp: Tensor  # [M, k], renormalised over the top-k
    gold_logp: Tensor  # [M] log-prob of the gold answer token


class TeacherCache:
    def __init__(self, base: BaseModel, top_k: int, cache_dir: Path):
        self.base, self.top_k = base, top_k
        self.dir = Path(cache_dir) / f"{base.weights_sha256[:16]}-k{top_k}"
        self._memory: dict[str, Teacher] = {}

    def key(self, doc: Document) -> str:
        probes = [(q.text, q.answer) for q in doc.questions]
        return hashlib.sha256(json.dumps([doc.text, probes]).encode()).hexdigest()

    def get(self, doc: Document) -> Teacher:
        key = self.key(doc)
        if key not in self._memory:
            path = self.dir / f"{key}.safetensors"
            if path.is_file():
                t = load_file(str(path))
            else:
                t = self._compute(doc)
                path.parent.mkdir(parents=True, exist_ok=True)
                save_file(t, str(path.with_suffix(".tmp")))
                path.with_suffix(".tmp").replace(path)
            self._memory[key] = Teacher(t["topk_ids"], t["topk_logp"], t["gold_logp"])
        return self._memory[key]

    @torch.no_grad()
    def _compute(self, doc: Document) -> dict[str, Tensor]:
        batch = make_batch(self.base.tokenizer, [doc], teacher=True)
        logp = answer_logprobs(self.base.model, batch, None).cpu()  # [M, V]
        vals, ids = logp.topk(min(self.top_k, logp.shape[-1]), dim=-1)
        gold = logp.gather(1, batch.target[:, None])[:, 0]
        return {
            "topk_ids": ids.contiguous(),
            "topk_logp": (vals - vals.logsumexp(-1, keepdim=True)).contiguous(),
            "gold_logp": gold.contiguous(),
        }

    def for_batch(self, docs: list[Document]) -> Teacher:
        parts = [self.get(d) for d in docs]
        return Teacher(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Teacher)))


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    cfg: TrainConfig
    base: BaseModel
    net: Hypernet
    opt: torch.optim.Optimizer
    train_docs: list[Document]
    heldout: list[Document]
    features: FeatureEncoder
    teacher: TeacherCache
    out_dir: Path
    log: Log
    step: int = 0
    base_nll: dict[str, float] = field(default_factory=dict)  # per held-out document, computed once


def setup(cfg: TrainConfig, base: BaseModel, out_dir: Path, log: Log) -> Run:
    """Data, caches, network and optimiser; resumes from ``out_dir/checkpoint`` when present."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else out_dir / "cache"
    torch.manual_seed(cfg.seed)
    net_cfg = HypernetConfig.from_base_model(
        base.model, base_model_id=base.model_id, base_weights_sha256=base.weights_sha256, **cfg.net
    )
    net = Hypernet(net_cfg).to(base.device)
    encoder = FeatureEncoder(base, FeatureConfig(chunk_tokens=net_cfg.chunk_tokens), cache / "features")
    # training reads one chunk per document: real documents longer than that are left out
    real = [d for d in training_documents(cfg.real_docs) if len(encoder.chunk_ids(d.text)) == 1]
    run = Run(
        cfg,
        base,
        net,
        make_optimizer(net, cfg),
        make_split(cfg.data, "train") + real,
        make_split(cfg.data, "heldout"),
        encoder,
        TeacherCache(base, cfg.top_k, cache / "teacher"),
        out_dir,
        log,
    )
    if (out_dir / "checkpoint" / "trainer.json").is_file():
        load_checkpoint(run, out_dir / "checkpoint")
    elif cfg.init_from:
        run.net.load_state_dict(load_hypernet(Path(cfg.init_from), base.device).state_dict())
        run.log({"kind": "init", "from": cfg.init_from})
    precompute(run)
    return run


def make_optimizer(net: Hypernet, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in net.parameters() if p.dim() >= 2]
    no_decay = [p for p in net.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def precompute(run: Run) -> None:
    """Features and teacher targets of every document, once (disk-cached across runs)."""
    start, docs = time.perf_counter(), run.train_docs + run.heldout
    for i, doc in enumerate(docs):
        run.features.encode(doc.text)
        run.teacher.get(doc)
        if (i + 1) % 200 == 0 or i + 1 == len(docs):
            elapsed = time.perf_counter() - start
            run.log({"kind": "precompute", "docs": i + 1, "of": len(docs), "seconds": round(elapsed, 1)})


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio, separately for each stage."""
    lo, hi = (0, cfg.bias_steps) if step < cfg.bias_steps else (cfg.bias_steps, cfg.steps)
    t, n = step - lo, max(hi - lo, 1)
    warm = min(cfg.warmup, n // 2)
    if t < warm:
        return cfg.lr * (t + 1) / warm
    progress = (t - warm) / max(n - warm, 1)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def sample_batch(run: Run, step: int) -> list[Document]:
    """A pure function of (seed, step): resuming replays the same batches."""
    cfg = run.cfg
    cap = curriculum_level(step / cfg.steps, cfg.data.max_level)
    pool = [d for d in run.train_docs if d.level <= cap]
    rng = random.Random(f"{cfg.seed}:batch:{step}")
    return rng.sample(pool, min(cfg.batch_docs, len(pool)))


def generated_factors(run: Run, docs: list[Document]) -> tuple[Tensor, Tensor]:
    """The network's A ``[N, L, r, d_in]`` and B ``[N, L, d_out, r]`` for single-chunk documents."""
    chunks = [run.features.encode(d.text)[0] for d in docs]  # training documents fit one chunk
    features, mask = pad_features(chunks)
    dev = run.base.device
    return run.net(features.to(dev), mask.to(dev))


def loss_step(run: Run, docs: list[Document]) -> tuple[Tensor, dict[str, float]]:
    """The loss of one batch; stage 1 (bias only) skips the generated path and the margin."""
    cfg, model, tok = run.cfg, run.base.model, run.base.tokenizer
    batch = make_batch(tok, docs)
    teacher = run.teacher.for_batch(docs)
    dev = run.base.device
    D, M = len(docs), batch.target.shape[0]
    if run.step < cfg.bias_steps:
        logp = answer_logprobs(model, batch, run.net.batch_adapter(None, None, batch.doc.to(dev)))
        A = B = None
    else:
        A, B = generated_factors(run, docs)
        index = torch.cat([batch.doc, shuffle_partners(docs)[batch.doc]]).to(dev)  # own, then shuffled
        logp = answer_logprobs(model, batch.doubled(), run.net.batch_adapter(A, B, index))
    nll = -logp.gather(1, batch.target.repeat(len(logp) // M)[:, None].to(dev))[:, 0]
    doc_of_token = batch.doc[batch.seq].to(dev)
    ce_own = per_group_mean(nll[:M], doc_of_token, D)  # [D]
    t_logp, t_ids = teacher.topk_logp.to(dev), teacher.topk_ids.to(dev)
    kl = (t_logp.exp() * (t_logp - logp[:M].gather(1, t_ids))).sum(-1).mean()  # student not renormalised
    loss = cfg.w_kl * kl + cfg.w_ce * ce_own.mean()
    stats = {"kl": kl.item(), "ce": ce_own.mean().item()}
    if A is not None and B is not None:
        ce_shuf = per_group_mean(nll[M:], doc_of_token, D)
        margin = F.relu(cfg.margin - (ce_shuf - ce_own)).mean()
        l1 = A.abs().mean() + B.abs().mean()
        shared = shared_fraction(A, B)
        loss = loss + cfg.w_margin * margin + cfg.w_l1 * l1 + cfg.w_shared * shared
        stats |= {
            "ce_shuf": ce_shuf.mean().item(),
            "spec": (ce_shuf - ce_own).mean().item(),
            "margin": margin.item(),
            "l1": l1.item(),
            "shared": shared.item(),
        }
    stats["loss"] = loss.item()
    return loss, stats


def shuffle_partners(docs: list[Document]) -> Tensor:
    """For each document, the next one of the same kind in the batch (cyclically) whose adapter the
    contrastive term applies to its questions; (i + 1) mod D when it is the only one of its kind.

    Within a kind, because a real-text document's adapter set against a synthetic one's can be told
    apart by the kind of document alone: a margin met that way teaches nothing about the content.
    """
    kinds = [any(q.fact == "continuation" for q in d.questions) for d in docs]
    D, partners = len(docs), []
    for i in range(D):
        same = [(i + k) % D for k in range(1, D) if kinds[(i + k) % D] == kinds[i]]
        partners.append(same[0] if same else (i + 1) % D)
    return torch.tensor(partners)


def set_stage(net: Hypernet, bias_stage: bool) -> None:
    """Stage 1 trains the bias LoRA only; stage 2 freezes it and trains everything else."""
    for p in net.generator_parameters():
        p.requires_grad_(not bias_stage)
    for p in net.bias_parameters():
        p.requires_grad_(bias_stage)


def fit(run: Run) -> None:
    """Optimise until ``steps`` (or ``stop_at_step``, or the deadline), evaluating and checkpointing."""
    cfg = run.cfg
    deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
    stop = min(cfg.steps, cfg.stop_at_step or cfg.steps)
    if run.step == 0 and cfg.eval_every:
        run.log(evaluate(run, cfg.eval_docs))
    window, tick = [], time.perf_counter()
    while run.step < stop and time.monotonic() < deadline:
        set_stage(run.net, run.step < cfg.bias_steps)
        for group in run.opt.param_groups:
            group["lr"] = lr_at(cfg, run.step)
        loss, stats = loss_step(run, sample_batch(run, run.step))
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        trainable = [p for p in run.net.parameters() if p.requires_grad]
        stats["grad_norm"] = nn.utils.clip_grad_norm_(trainable, cfg.grad_clip).item()
        run.opt.step()
        run.step += 1
        window.append(stats)
        if run.step % cfg.log_every == 0 or run.step == stop:
            seconds = (time.perf_counter() - tick) / len(window)
            run.log(train_record(run, window, seconds))
            window, tick = [], time.perf_counter()
        if cfg.eval_every and run.step % cfg.eval_every == 0:
            run.log(evaluate(run, cfg.eval_docs))
        if run.step % cfg.ckpt_every == 0:
            save_checkpoint(run)
    save_checkpoint(run)


def train_record(run: Run, window: list[dict[str, float]], seconds: float) -> dict[str, Any]:
    keys = sorted({k for s in window for k in s})
    means = {k: sum(s[k] for s in window if k in s) / sum(k in s for s in window) for k in keys}
    return {
        "kind": "train",
        "step": run.step,
        "stage": "bias" if run.step <= run.cfg.bias_steps else "generator",
        "lr": lr_at(run.cfg, run.step - 1),
        "sec_per_step": round(seconds, 3),
        "docs_per_s": round(run.cfg.batch_docs / seconds, 3),
        "gen_scale_abs": run.net.gen_scale.abs().mean().item(),
        **{k: round(v, 5) for k, v in means.items()},
    }


# ---------------------------------------------------------------- evaluation

CONDITIONS = ("base", "bias", "own", "wrong", "in_context")


@torch.no_grad()
def evaluate(run: Run, n_docs: int | None = None, em_docs: int = 0) -> dict[str, Any]:
    """Held-out answer NLL under the five conditions, gap closed with bootstrap CIs, exact match."""
    docs = run.heldout[:n_docs] if n_docs else run.heldout
    n, bs = len(docs), run.cfg.batch_docs
    parts = [generated_factors(run, docs[i : i + bs]) for i in range(0, n, bs)]
    A, B = torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])
    nll: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    by_fact: dict[str, list[float]] = {}
    for start in range(0, n, bs):
        block = docs[start : start + bs]
        per_doc, spec = block_nll(run, block, start, n, A, B)
        for cond in CONDITIONS:
            nll[cond] += per_doc[cond]
        for fact, value in spec:
            by_fact.setdefault(fact, []).append(value)
    t = {c: torch.tensor(v, dtype=torch.float64) for c, v in nll.items()}
    gap = t["base"] - t["in_context"]
    record: dict[str, Any] = {"kind": "eval", "step": run.step, "docs": n}
    record |= {f"nll_{c}": round(t[c].mean().item(), 4) for c in CONDITIONS}
    record["gap_closed"] = bootstrap_ratio(t["base"] - t["own"], gap, run.cfg.seed)
    record["gap_closed_bias_only"] = round(((t["base"] - t["bias"]).mean() / gap.mean()).item(), 4)
    record["gap_closed_wrong_doc"] = round(((t["base"] - t["wrong"]).mean() / gap.mean()).item(), 4)
    record["specificity"] = bootstrap_ratio(t["wrong"] - t["own"], torch.ones(n, dtype=torch.float64), 1)
    record["specificity_positive"] = round((t["wrong"] > t["own"]).double().mean().item(), 3)
    record["specificity_by_fact"] = {f: round(sum(v) / len(v), 4) for f, v in sorted(by_fact.items())}
    if em_docs:
        record["exact_match"] = exact_match(run, docs[:em_docs], A, B)
    return record


def block_nll(
    run: Run, block: list[Document], start: int, n: int, A: Tensor, B: Tensor
) -> tuple[dict[str, list[float]], list[tuple[str, float]]]:
    """Per-document mean answer NLL of one block under each condition, and per-question wrong - own.

    The block's documents are ``start..`` in an evaluation set of ``n``; the wrong-document adapter
    of document i is the generated one of document (i + 1) mod n.
    """
    model, net, dev = run.base.model, run.net, run.base.device
    batch = make_batch(run.base.tokenizer, block)
    own = (batch.doc + start).to(dev)
    adapters = {
        "bias": net.batch_adapter(None, None, own),
        "own": net.batch_adapter(A, B, own),
        "wrong": net.batch_adapter(A, B, (own + 1) % n),
    }
    if any(d.doc_id not in run.base_nll for d in block):
        adapters["base"] = None  # the base model never changes: scored once per document
    token_nll = {}
    for cond, adapter in adapters.items():
        logp = answer_logprobs(model, batch, adapter).cpu()
        token_nll[cond] = -logp.gather(1, batch.target[:, None])[:, 0]
    token_nll["in_context"] = -run.teacher.for_batch(block).gold_logp
    doc_of_token = batch.doc[batch.seq]
    per_doc = {c: per_group_mean(v, doc_of_token, len(block)).tolist() for c, v in token_nll.items()}
    run.base_nll |= dict(zip([d.doc_id for d in block], per_doc.get("base", []), strict=False))
    per_doc["base"] = [run.base_nll[d.doc_id] for d in block]
    per_question = {c: per_group_mean(token_nll[c], batch.seq, len(batch.doc)) for c in ("own", "wrong")}
    facts = [q.fact for d in block for q in d.questions]
    return per_doc, list(zip(facts, (per_question["wrong"] - per_question["own"]).tolist(), strict=True))


def bootstrap_ratio(num: Tensor, den: Tensor, seed: int, n_boot: int = 1000) -> dict[str, float]:
    """mean(num) / mean(den) with a 95% bootstrap interval over documents."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(num), (n_boot, len(num)), generator=gen)
    ratios = num[idx].mean(1) / den[idx].mean(1)
    lo, hi = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=ratios.dtype)).tolist()
    return {
        "mean": round((num.mean() / den.mean()).item(), 4),
        "ci_low": round(lo, 4),
        "ci_high": round(hi, 4),
    }


def exact_match(run: Run, docs: list[Document], A: Tensor, B: Tensor) -> dict[str, float]:
    """Greedy answers containing the gold answer, under base / own / wrong adapter / in-context.

    Greedy decoding and matching are ``hypernet.evaluate``'s (whole words, punctuation and case ignored).
    """
    net, base, hits = run.net, run.base, {"base": 0, "own": 0, "wrong": 0, "in_context": 0}
    adapters = [net.generate(run.features.encode(d.text)) for d in docs]
    total = 0
    for i, d in enumerate(docs):
        for q in d.questions:
            question = student_prompt(q.text)
            answers = {
                "base": greedy_answer(base, question, None, 16),
                "own": greedy_answer(base, question, adapters[i], 16),
                "wrong": greedy_answer(base, question, adapters[(i + 1) % len(docs)], 16),
                "in_context": greedy_answer(base, question, None, 16, context=d.text),
            }
            total += 1
            for cond, text in answers.items():
                hits[cond] += answer_matches(text, q.answer)
    return {c: round(h / max(total, 1), 4) for c, h in hits.items()} | {"questions": total}


# ---------------------------------------------------------------- checkpoints

# fields that may change between a run and its resumption without changing what is trained
_RESUMABLE = {"max_minutes", "stop_at_step", "cache_dir", "log_every", "eval_every", "eval_docs", "em_docs"}


class TrainError(Exception):
    """Training cannot start or resume; the message says why."""


def save_checkpoint(run: Run) -> Path:
    """``out_dir/checkpoint``: the network, AdamW's state as safetensors, and the step + config as JSON."""
    tmp, final = run.out_dir / "checkpoint.tmp", run.out_dir / "checkpoint"
    shutil.rmtree(tmp, ignore_errors=True)
    save_hypernet(run.net, tmp, training={"step": run.step})
    state = run.opt.state_dict()
    tensors = {f"{i}.{k}": v.contiguous() for i, s in state["state"].items() for k, v in s.items()}
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    meta = {"step": run.step, "config": run.cfg.to_dict(), "param_groups": state["param_groups"]}
    (tmp / "trainer.json").write_text(json.dumps(meta, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def load_checkpoint(run: Run, ckpt: Path) -> None:
    meta = json.loads((ckpt / "trainer.json").read_text())
    # fields added since the checkpoint was written take their defaults
    saved, now = TrainConfig(**meta["config"]).to_dict(), run.cfg.to_dict()
    changed = sorted(k for k in now.keys() - _RESUMABLE if saved.get(k) != now[k])
    if changed:
        raise TrainError(f"cannot resume from {ckpt}: the config differs in {changed}; use a new --out")
    run.net.load_state_dict(load_hypernet(ckpt, run.base.device).state_dict())
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in load_file(str(ckpt / "optimizer.safetensors")).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    run.opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    run.step = meta["step"]
    run.log({"kind": "resume", "step": run.step, "from": str(ckpt)})


# ---------------------------------------------------------------- entry points


def jsonl_logger(path: Path, log: Log) -> Log:
    """Append every record to ``path`` (with a timestamp) and pass it on to ``log``."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def emit(record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 1), **record}
        with path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        log(record)

    return emit


def train(cfg: TrainConfig, base: BaseModel, out_dir: Path, log: Log) -> Path:
    """Train (or resume) a hypernetwork for ``base``; returns the final checkpoint dir ``out_dir/final``."""
    out_dir = Path(out_dir)
    log = jsonl_logger(out_dir / "metrics.jsonl", log)
    start = time.perf_counter()
    run = setup(cfg, base, out_dir, log)
    fit(run)
    final = evaluate(run, None, cfg.em_docs) | {"kind": "final"}
    log(final)
    summary = {
        "steps": run.step,
        "minutes_this_session": round((time.perf_counter() - start) / 60, 2),
        "threads": torch.get_num_threads(),
        "device": str(base.device),
        "train_config": cfg.to_dict(),
        "heldout_eval": final,
    }
    save_hypernet(run.net, out_dir / "final", training=summary)
    return out_dir / "final"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, TrainConfig]:
    p = argparse.ArgumentParser(prog="python -m hypernet.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="run dir: checkpoints, metrics.jsonl, final/")
    p.add_argument("--base", default="smollm2-135m-instruct", help="base model alias or local HF dir")
    p.add_argument("--model-cache", default=".instill/models", type=Path, help="where base models are cached")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock bound on the training loop")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (the schedule's length)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. data.n_train=800")
    args = p.parse_args(argv)
    options: dict[str, Any] = {"max_minutes": args.minutes} | ({"steps": args.steps} if args.steps else {})
    return args, TrainConfig(**(options | parse_overrides(args.set)))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as TrainConfig fields: values parsed as JSON when they are, dotted keys
    (``data.n_train=800``) nested one level."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        head, _, tail = key.partition(".")
        if tail:
            options.setdefault(head, {})[tail] = value
        else:
            options[key] = value
    return options


def main(argv: list[str] | None = None) -> None:
    args, cfg = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = load_base_model(args.base, args.model_cache, device=args.device)
    final = train(cfg, base, args.out, log=lambda record: print(json.dumps(record), flush=True))
    print(f"final checkpoint: {final}", flush=True)


if __name__ == "__main__":
    main()
