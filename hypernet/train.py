"""Meta-training of the Doc-to-LoRA hypernetwork: setup -> train -> validate -> save.

Student = base model + generated adapter, seeing only the question; teacher = base model with the
document in the prompt (``hypernet.teacher``). Per batch of documents the loss is

    w_kl * KL(teacher top-k || student) + w_ce * CE(gold answer)            on the own adapter
  + w_margin * mean_docs relu(margin - (CE_shuffled - CE_own))               contrastive margin
  + w_l1 * (mean|A| + mean|B|) + w_shared * shared_fraction(B·A)           on the generated factors

where "shuffled" applies another same-kind document's adapter to document i's questions in the same
forward pass. Stage 1 (``bias_steps``) trains the bias LoRA alone with KL + CE; stage 2 freezes it and
trains the generated path (see hypernet.model for why).

Documents: seeded synthetic fact documents (``hypernet.data``) and real prose from the package corpus
(``corpus``, built by ``instill corpus build``) with knowledge probes on informative spans
(``hypernet.spans``). Real documents are seen about once, so their features are computed when a batch
needs them (memory cache only); teacher targets are small and cached on disk, held-out features too.

Validation on held-out documents (``hypernet.validate``): synthetic ones with entities and values never
seen in training, and real ones from held-out packages. Checkpoints are safetensors + JSON; training
resumes to the identical state because batches are a pure function of (seed, step).

Entry points: ``train(cfg, base, out_dir, log)`` and ``python -m hypernet.train --out runs/NAME``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypernet.base_model import BaseModel, load_base_model
from hypernet.corpus import load_package_corpus, probe_document, training_documents
from hypernet.data import DataConfig, Document, curriculum_level, make_split
from hypernet.features import FeatureConfig, FeatureEncoder
from hypernet.metrics import per_group_mean
from hypernet.model import Hypernet, HypernetConfig, load_hypernet, save_hypernet, shared_fraction
from hypernet.teacher import TeacherCache, answer_logprobs, make_batch
from hypernet.trainer_state import (
    changed_fields,
    jsonl_logger,
    load_optimizer,
    read_checkpoint_meta,
    write_checkpoint,
)
from hypernet.validate import Subject, validate

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
    eval_docs: int = 32  # held-out documents per set in mid-run validations (the final one uses all)
    em_docs: int = 16  # held-out documents scored by greedy exact match at the end
    ckpt_every: int = 50
    ckpt_minutes: float | None = None  # also checkpoint when this much time passed since the last one
    max_minutes: float | None = None  # wall-clock bound on the training loop; then evaluate and save
    stop_at_step: int | None = None  # stop there (a checkpoint is written); the schedule still spans `steps`
    cache_dir: str | None = None  # teacher + held-out feature cache; default: out_dir/cache
    # real text: the package corpus (a built corpus dir) or, without it, the shipped python-docs corpus
    corpus: str | None = None
    real_docs: int = 0  # real training documents (a seeded sample of the corpus' training split)
    real_heldout: int = 48  # real held-out documents (held-out packages) for validation
    real_fraction: float = 0.5  # share of each batch drawn from real documents
    max_chunks: int = 2  # real training documents longer than this many chunks are left out
    n_knowledge: int = 6  # span probes per real document
    n_continuation: int = 2  # continuation probes per real document
    probes_per_doc: int = 0  # questions trained per document per step (a seeded subset; 0 = all)
    init_from: str | None = None  # a checkpoint dir whose network weights start this run
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        if not 0 <= self.bias_steps < self.steps:
            raise ValueError(
                f"TrainConfig: need 0 <= bias_steps < steps, got {self.bias_steps}, {self.steps}"
            )
        if self.batch_docs < 2:
            raise ValueError("TrainConfig: batch_docs must be >= 2 (the contrastive term shuffles within it)")
        if not 0 <= self.real_fraction <= 1:
            raise ValueError(f"TrainConfig: real_fraction must be in [0, 1], got {self.real_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    cfg: TrainConfig
    base: BaseModel
    net: Hypernet
    opt: torch.optim.Optimizer
    synthetic: list[Document]  # training documents
    real: list[Document]
    heldout: dict[str, list[Document]]  # validation sets by name
    features: FeatureEncoder  # memory-cached: training documents are seen about once
    subject: Subject  # what validation needs, with disk-cached held-out features
    out_dir: Path
    log: Log
    corpus_sha256: str = ""
    step: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # time per phase since the last log line
    on_checkpoint: Callable[[Path], None] | None = None  # called with each checkpoint written

    @property
    def teacher(self) -> TeacherCache:
        return self.subject.teacher


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
    feature_cfg = FeatureConfig(chunk_tokens=net_cfg.chunk_tokens, memory_bytes=2 << 30)
    real, real_heldout, corpus_sha = real_documents(cfg, net_cfg.chunk_tokens)
    teacher = TeacherCache(base, cfg.top_k, cache / "teacher")
    held_features = FeatureEncoder(base, feature_cfg, cache / "features")
    subject = Subject(base, net, held_features, teacher, cfg.batch_docs, cfg.seed)
    heldout = {"synthetic": make_split(cfg.data, "heldout")}
    if real_heldout:
        heldout["real"] = real_heldout
    run = Run(
        cfg, base, net, make_optimizer(net, cfg), make_split(cfg.data, "train"), real, heldout,
        FeatureEncoder(base, feature_cfg), subject, out_dir, log, corpus_sha,
    )  # fmt: skip
    if (out_dir / "checkpoint" / "trainer.json").is_file():
        load_checkpoint(run, out_dir / "checkpoint")
    elif cfg.init_from:
        run.net.load_state_dict(load_hypernet(Path(cfg.init_from), base.device).state_dict())
        run.log({"kind": "init", "from": cfg.init_from})
    log({"kind": "data", "synthetic": len(run.synthetic), "real": len(real), "corpus_sha256": corpus_sha}
        | {f"heldout_{k}": len(v) for k, v in heldout.items()})  # fmt: skip
    precompute(run)
    return run


def real_documents(cfg: TrainConfig, chunk_tokens: int) -> tuple[list[Document], list[Document], str]:
    """Real training documents (a seeded sample), held-out ones, and the corpus manifest's sha256."""
    if not cfg.corpus:
        return training_documents(cfg.real_docs), [], ""
    train, sha = load_package_corpus(Path(cfg.corpus), "train")
    held, _ = load_package_corpus(Path(cfg.corpus), "heldout")
    fits = [d for d in train if math.ceil(d.n_tokens / chunk_tokens) <= cfg.max_chunks]
    random.Random(f"{cfg.seed}:real").shuffle(fits)
    random.Random(f"{cfg.seed}:real-heldout").shuffle(held)

    def probed(docs, n):
        out = []
        for d in docs:
            doc = probe_document(d.doc_id, d.text, cfg.n_knowledge, cfg.n_continuation, cfg.seed)
            if any(q.fact != "continuation" for q in doc.questions):
                out.append(doc)
            if len(out) >= n:
                break
        return out

    return probed(fits, cfg.real_docs), probed(held, cfg.real_heldout), sha


def make_optimizer(net: Hypernet, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in net.parameters() if p.dim() >= 2]
    no_decay = [p for p in net.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def precompute(run: Run) -> None:
    """Features and teacher targets of the held-out documents, once (disk-cached across runs)."""
    start, docs = time.perf_counter(), [d for docs in run.heldout.values() for d in docs]
    for i, doc in enumerate(docs):
        run.subject.features.encode(doc.text)
        run.teacher.get(doc)
        if (i + 1) % 100 == 0 or i + 1 == len(docs):
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
    """A pure function of (seed, step): resuming replays the same batches.

    ``real_fraction`` of the batch are real documents (when there are any), the rest synthetic ones up
    to the curriculum's current level.
    """
    cfg = run.cfg
    rng = random.Random(f"{cfg.seed}:batch:{step}")
    n_real = min(round(cfg.batch_docs * cfg.real_fraction), len(run.real)) if run.real else 0
    cap = curriculum_level(step / cfg.steps, cfg.data.max_level)
    pool = [d for d in run.synthetic if d.level <= cap]
    n_synth = min(cfg.batch_docs - n_real, len(pool))
    return rng.sample(pool, n_synth) + rng.sample(run.real, n_real)


def timed(run: Run, phase: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    run.seconds[phase] = run.seconds.get(phase, 0.0) + time.perf_counter() - start
    return out


def probe_picks(run: Run, docs: list[Document]) -> list[list[int]]:
    """Which questions of each document this step trains on: all, or a seeded ``probes_per_doc`` subset.

    The student pass costs per question while the document's features and teacher cost once, so a
    few questions per visit buy more documents per second.
    """
    k = run.cfg.probes_per_doc
    rng = random.Random(f"{run.cfg.seed}:probes:{run.step}")
    return [
        sorted(rng.sample(range(len(d.questions)), k))
        if 0 < k < len(d.questions)
        else list(range(len(d.questions)))
        for d in docs
    ]


def loss_step(run: Run, docs: list[Document]) -> tuple[Tensor, dict[str, float]]:
    """The loss of one batch; stage 1 (bias only) skips the generated path and the margin."""
    cfg, model = run.cfg, run.base.model
    picks = probe_picks(run, docs)
    asked = [
        dataclasses.replace(d, questions=tuple(d.questions[j] for j in p))
        for d, p in zip(docs, picks, strict=True)
    ]
    batch = make_batch(run.base.tokenizer, asked)
    # targets for the asked questions only: a real document is seen about once, so the questions
    # not asked now would be computed for nothing
    teacher = timed(run, "teacher", lambda: run.teacher.for_batch(asked))
    chunks = timed(run, "features", lambda: [run.features.encode(d.text) for d in docs])
    dev = run.base.device
    D, M = len(docs), batch.target.shape[0]
    start = time.perf_counter()
    with autocast(run):
        if run.step < cfg.bias_steps:
            logp = answer_logprobs(model, batch, run.net.batch_adapter(None, None, batch.doc.to(dev)))
            A = B = None
        else:
            A, B = run.net.document_factors(chunks)
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
        shared = shared_fraction(A.float(), B.float())
        loss = loss + cfg.w_margin * margin + cfg.w_l1 * l1 + cfg.w_shared * shared
        stats |= {
            "ce_shuf": ce_shuf.mean().item(),
            "spec": (ce_shuf - ce_own).mean().item(),
            "margin": margin.item(),
            "l1": l1.item(),
            "shared": shared.item(),
        }
    stats["loss"] = loss.item()
    run.seconds["forward"] = run.seconds.get("forward", 0.0) + time.perf_counter() - start
    return loss, stats


def autocast(run: Run):
    if run.cfg.amp and str(run.base.device).startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def shuffle_partners(docs: list[Document]) -> Tensor:
    """For each document, the next one of the same kind in the batch (cyclically) whose adapter the
    contrastive term applies to its questions; (i + 1) mod D when it is the only one of its kind.

    Within a kind, because a real-text document's adapter set against a synthetic one's can be told
    apart by the kind of document alone: a margin met that way teaches nothing about the content.
    """
    kinds = [d.level == 0 for d in docs]  # real documents have no curriculum level
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
    """Optimise until ``steps`` (or ``stop_at_step``, or the deadline), validating and checkpointing."""
    cfg = run.cfg
    deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
    stop = min(cfg.steps, cfg.stop_at_step or cfg.steps)
    if run.step == 0 and cfg.eval_every:
        evaluate(run, cfg.eval_docs)
    window, tick, last_ckpt = [], time.perf_counter(), time.monotonic()
    while run.step < stop and time.monotonic() < deadline:
        set_stage(run.net, run.step < cfg.bias_steps)
        for group in run.opt.param_groups:
            group["lr"] = lr_at(cfg, run.step)
        loss, stats = loss_step(run, sample_batch(run, run.step))
        start = time.perf_counter()
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        trainable = [p for p in run.net.parameters() if p.requires_grad]
        stats["grad_norm"] = nn.utils.clip_grad_norm_(trainable, cfg.grad_clip).item()
        run.opt.step()
        run.seconds["backward"] = run.seconds.get("backward", 0.0) + time.perf_counter() - start
        run.step += 1
        window.append(stats)
        if run.step % cfg.log_every == 0 or run.step == stop:
            run.log(train_record(run, window, time.perf_counter() - tick))
            window, tick = [], time.perf_counter()
        if cfg.eval_every and run.step % cfg.eval_every == 0:
            evaluate(run, cfg.eval_docs)
        due = cfg.ckpt_minutes is not None and time.monotonic() - last_ckpt >= 60 * cfg.ckpt_minutes
        if run.step % cfg.ckpt_every == 0 or due:
            save_checkpoint(run)
            last_ckpt = time.monotonic()
    save_checkpoint(run)


def evaluate(run: Run, n_docs: int | None = None, em_docs: int = 0, log: bool = True) -> list[dict[str, Any]]:
    """Validate on every held-out set (the first ``n_docs`` of each); returns (and logs) the records."""
    records = []
    for label, docs in run.heldout.items():
        with autocast(run):
            record = validate(run.subject, docs[:n_docs] if n_docs else docs, label, em_docs)
        record["step"] = run.step
        if log:
            run.log(record)
        records.append(record)
    return records


def train_record(run: Run, window: list[dict[str, float]], seconds: float) -> dict[str, Any]:
    """Means over the window, seconds per step and per document-step, and where the time went."""
    keys = sorted({k for s in window for k in s})
    means = {k: sum(s[k] for s in window if k in s) / sum(k in s for s in window) for k in keys}
    per_step = seconds / len(window)
    phases = {f"sec_{k}": round(v / len(window), 3) for k, v in run.seconds.items()}
    run.seconds = {}
    return {
        "kind": "train",
        "step": run.step,
        "stage": "bias" if run.step <= run.cfg.bias_steps else "generator",
        "lr": lr_at(run.cfg, run.step - 1),
        "sec_per_step": round(per_step, 3),
        "sec_per_doc_step": round(per_step / run.cfg.batch_docs, 3),
        **phases,
        "gen_scale_abs": run.net.gen_scale.abs().mean().item(),
        **{k: round(v, 5) for k, v in means.items()},
    }


# ---------------------------------------------------------------- checkpoints

# fields that may change between a run and its resumption without changing what is trained
_RESUMABLE = {
    "max_minutes", "stop_at_step", "cache_dir", "log_every", "eval_every", "eval_docs", "em_docs",
    "ckpt_minutes", "ckpt_every", "corpus",
}  # fmt: skip


class TrainError(Exception):
    """Training cannot start or resume; the message says why."""


def save_checkpoint(run: Run) -> Path:
    """``out_dir/checkpoint``: the network, AdamW's state as safetensors, and the step + config as JSON."""
    meta = {"step": run.step, "config": run.cfg.to_dict(), "corpus_manifest_sha256": run.corpus_sha256}
    save_net = partial(save_hypernet, run.net, training={"step": run.step})
    final = write_checkpoint(run.out_dir, save_net, run.opt, meta)
    if run.on_checkpoint is not None:
        run.on_checkpoint(final)
    return final


def load_checkpoint(run: Run, ckpt: Path) -> None:
    meta = read_checkpoint_meta(ckpt)
    changed = changed_fields(TrainConfig(**meta["config"]).to_dict(), run.cfg.to_dict(), _RESUMABLE)
    if changed:
        raise TrainError(f"cannot resume from {ckpt}: the config differs in {changed}; use a new --out")
    if meta.get("corpus_manifest_sha256", "") != run.corpus_sha256:
        raise TrainError(
            f"cannot resume from {ckpt}: it was trained on another corpus (manifest sha256 differs)"
        )
    run.net.load_state_dict(load_hypernet(ckpt, run.base.device).state_dict())
    load_optimizer(run.opt, ckpt, meta["param_groups"])
    run.step = meta["step"]
    run.log({"kind": "resume", "step": run.step, "from": str(ckpt)})


# ---------------------------------------------------------------- entry points


def train(
    cfg: TrainConfig,
    base: BaseModel,
    out_dir: Path,
    log: Log,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> Path:
    """Train (or resume) a hypernetwork for ``base``; returns the final checkpoint dir ``out_dir/final``.

    ``on_checkpoint`` is called with every checkpoint written, and with the final one.
    """
    out_dir = Path(out_dir)
    log = jsonl_logger(out_dir / "metrics.jsonl", log)
    start = time.perf_counter()
    run = setup(cfg, base, out_dir, log)
    run.on_checkpoint = on_checkpoint
    fit(run)
    final = {r["set"]: r for r in evaluate(run, None, cfg.em_docs, log=False)}
    log({"kind": "final", "sets": final})
    summary = {
        "steps": run.step,
        "minutes_this_session": round((time.perf_counter() - start) / 60, 2),
        "threads": torch.get_num_threads(),
        "device": str(base.device),
        "train_config": cfg.to_dict(),
        "corpus_manifest_sha256": run.corpus_sha256,
        "heldout_eval": final["synthetic"],  # the first set, under the key earlier checkpoints used
        "heldout_eval_by_set": final,
    }
    save_hypernet(run.net, out_dir / "final", training=summary)
    if on_checkpoint is not None:
        on_checkpoint(out_dir / "final")
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
