"""SFT of the Text-to-LoRA hypernetwork, and the per-behaviour oracle LoRA trained the same way.

Each step samples ``batch_tasks`` training behaviours (``hypernet.t2l_tasks``), one training
description and ``per_task`` training inputs each. The network turns each description's embedding
into an adapter, the adapter is applied to the frozen base model (one adapter per sequence), and the
loss is the cross-entropy of the rule-built reference output (plus the end-of-turn token) given the
input alone: the description is never in the prompt. An L2 penalty on the generated factors follows
T2L. Two optional terms: a contrastive margin (``w_margin``, as in Doc-to-LoRA): the same inputs are also
scored with the adapter of ANOTHER behaviour's description from the batch, and the loss asks the own
description's CE to be ``margin`` nats below it, so the adapter has to depend on the description; and a
preservation term (``w_preserve``): KL(base || adapted) on a window of the packaged general text, taken
from the part that ``t2l_eval``'s preservation measurement does not read. ``init_from`` warm-starts the
network from a T2L checkpoint (weights only, new optimizer, step 0). Batches are a pure function of
(seed, step), so a resumed run replays the same data.

Checkpoints (``out_dir/checkpoint``): ``t2l.safetensors`` + ``optimizer.safetensors`` + ``trainer.json``;
the final network goes to ``out_dir/final``. Progress records go to ``out_dir/metrics.jsonl`` and the
``log`` callback.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from hypernet.base_model import BaseModel, chat_ids
from hypernet.batching import pad_id, right_pad
from hypernet.lora import LoraWeights, applied
from hypernet.metrics import general_texts, per_group_mean
from hypernet.t2l import T2LConfig, T2LError, T2LHypernet, embed_descriptions, load_t2l, save_t2l
from hypernet.t2l_tasks import Behaviour, behaviours, composed_behaviours
from hypernet.trainer_state import (
    changed_fields,
    jsonl_logger,
    load_optimizer,
    read_checkpoint_meta,
    write_checkpoint,
)

Log = Callable[[dict[str, Any]], None]
Example = tuple[int, list[int], list[int]]  # (description index, prompt ids, target ids)


@dataclass
class T2LTrainConfig:
    seed: int = 0
    steps: int = 2000  # the cosine schedule's length
    batch_tasks: int = 8  # behaviours (one description each) per step
    per_task: int = 2  # inputs per behaviour per step
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 20
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    w_l2: float = 1e-3  # L2 penalty on the generated factors (T2L)
    w_margin: float = 0.0  # contrastive term: relu(margin - (ce_other_description - ce_own))
    margin: float = 1.0  # nats
    margin_disjoint: bool = False  # the margin's other description: the next behaviour sharing no rule
    extra_combos: int = 0  # further training behaviours: rule + style rule pairs (composed_behaviours)
    w_preserve: float = 0.0  # KL(base || adapted) on general text
    preserve_tokens: int = 128  # tokens of general text per step (one window)
    preserve_adapters: int = 2  # batch descriptions whose adapters read that window
    preserve_skip: int = 1024  # general-text tokens left to the eval (T2LEvalConfig.preservation_tokens)
    init_from: str | None = None  # warm start: a T2L checkpoint folder (network weights only)
    max_target_tokens: int = 40
    # network (T2LConfig fields)
    latent: int = 128
    rank: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    encoder_layer: int = -1
    zscore: bool = False
    # bookkeeping
    log_every: int = 10
    eval_every: int = 100
    ckpt_every: int = 50
    max_minutes: float | None = None
    stop_at_step: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "batch_tasks": self.batch_tasks >= 1,
            "per_task": self.per_task >= 1,
            "lr": self.lr > 0,
            "rank": self.rank >= 1,
            "max_target_tokens": self.max_target_tokens >= 1,
            "w_margin": self.w_margin >= 0,
            "extra_combos": self.extra_combos >= 0,
            "w_preserve": self.w_preserve >= 0,
            "preserve_tokens": self.preserve_tokens >= 2,
            "preserve_adapters": self.preserve_adapters >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"T2LTrainConfig: invalid value for {', '.join(bad)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class T2LTrainError(Exception):
    """Training cannot start or resume; the message says why."""


# ---------------------------------------------------------------- data and loss


def example(base: BaseModel, beh: Behaviour, item, desc_index: int, max_tokens: int) -> Example:
    """Prompt = the input alone in a user turn; target = the reference output and the end-of-turn token."""
    prompt, target = chat_ids(base.tokenizer, item.question, beh.target(item))
    eos = base.tokenizer.eos_token_id
    return desc_index, prompt, target[:max_tokens] + ([eos] if eos is not None else [])


def sft_loss(base: BaseModel, batch: list[Example], weights: LoraWeights | None) -> Tensor:
    """Mean over sequences of the per-token CE of the targets, with ``weights`` applied."""
    return sft_nll(base, batch, weights).mean()


def sft_nll(base: BaseModel, batch: list[Example], weights: LoraWeights | None) -> Tensor:
    """``[n_sequences]``: each sequence's mean per-token CE of its target, with ``weights`` applied."""
    seqs = [(p, t) for _, p, t in batch]
    ids, mask, predict = right_pad(seqs, pad_id(base.tokenizer))
    dev = base.device
    with applied(base.model, weights):
        logits = base.model(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            logits_to_keep=predict.to(dev),
            use_cache=False,
        ).logits  # [M, V]
    gold = torch.tensor([tok for _, t in seqs for tok in t], device=dev)
    nll = F.cross_entropy(logits.float(), gold, reduction="none")
    seq_of = torch.tensor([i for i, (_, t) in enumerate(seqs) for _ in t], device=dev)
    return per_group_mean(nll, seq_of, len(seqs))


@dataclass
class Data:
    """Every description embedded once, and the behaviours with the indices of their descriptions."""

    texts: list[str]
    emb: Tensor  # [n_descriptions, d_embed]
    train: list[tuple[Behaviour, list[int]]]  # training behaviours, their training descriptions
    val: dict[str, list[tuple[Behaviour, list[int]]]]  # "unseen_desc", "unseen_behaviour"
    owner: list[Behaviour] = field(default_factory=list)  # the behaviour of every description

    @cached_property
    def rule_sets(self) -> list[frozenset[str]]:
        """The rule names of every description's behaviour (the rule-disjoint margin's partners)."""
        return [frozenset(r.name for r in b.rules) for b in self.owner]


def build_data(
    base: BaseModel, encoder_layer: int, cache_dir: Path | None, seed: int = 0, extra_combos: int = 0
) -> Data:
    """Training descriptions of the training behaviours (and ``extra_combos`` composed ones); ONE
    held-out description per behaviour for the validation batches (embedding costs a base-model pass
    per description)."""
    texts: list[str] = []
    owner: list[Behaviour] = []
    rng = random.Random(f"{seed}:t2l-val-desc")

    def add(beh: Behaviour, descs: list[str]) -> list[int]:
        texts.extend(descs)
        owner.extend([beh] * len(descs))
        return list(range(len(texts) - len(descs), len(texts)))

    seen = behaviours("train") + composed_behaviours(extra_combos, seed)
    train = [(b, add(b, b.descriptions("train"))) for b in seen]
    val = {
        "unseen_desc": [(b, add(b, [rng.choice(b.descriptions("heldout"))])) for b in behaviours("train")],
        "unseen_behaviour": [
            (b, add(b, [rng.choice(b.descriptions("heldout"))])) for b in behaviours("heldout")
        ],
    }
    return Data(texts, cached_embeddings(base, texts, encoder_layer, cache_dir), train, val, owner)


def cached_embeddings(base: BaseModel, texts: list[str], layer: int, cache_dir: Path | None) -> Tensor:
    """``embed_descriptions`` memoised on disk by (base weights, layer, texts)."""
    if cache_dir is None:
        return embed_descriptions(base, texts, layer)
    key = hashlib.sha256(json.dumps([base.weights_sha256, layer, texts]).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"embeddings-{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["emb"]
    emb = embed_descriptions(base, texts, layer)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb": emb.contiguous()}, str(path))
    return emb


def sample_batch(base: BaseModel, data: Data, cfg: T2LTrainConfig, step: int) -> list[Example]:
    rng = random.Random(f"{cfg.seed}:t2l:{step}")
    out = []
    for beh, descs in rng.sample(data.train, min(cfg.batch_tasks, len(data.train))):
        d = rng.choice(descs)
        for item in rng.sample(beh.inputs("train"), cfg.per_task):
            out.append(example(base, beh, item, d, cfg.max_target_tokens))
    return out


def val_batch(base: BaseModel, data: Data, label: str, cfg: T2LTrainConfig) -> list[Example]:
    """A fixed held-out batch: one held-out input of every behaviour of the set, one description each."""
    rng = random.Random(f"{cfg.seed}:t2l-val:{label}")
    out = []
    for beh, descs in data.val[label]:
        d = rng.choice(descs)
        out += [example(base, beh, item, d, cfg.max_target_tokens) for item in beh.inputs("heldout")[:1]]
    return out


def partners(index: list[int], rules: list[frozenset[str]] | None = None) -> list[int]:
    """For each example, the description of the NEXT behaviour in the batch (cyclically): the examples
    of one behaviour share one description, so this is always another behaviour's description. With
    ``rules`` (the rule names of every description), the next one sharing no rule with the own one,
    where there is one: ``upper`` and ``one_word+upper`` should not be pushed apart on upper case."""
    order = list(dict.fromkeys(index))
    if len(order) < 2:
        raise T2LTrainError("the contrastive margin needs batch_tasks >= 2")

    def partner(d: int) -> int:
        after = order[order.index(d) + 1 :] + order[: order.index(d)]
        disjoint = [o for o in after if rules is not None and not rules[o] & rules[d]]
        return (disjoint or after)[0]

    return [partner(d) for d in index]


def net_loss(run: Run, batch: list[Example], train: bool = False) -> tuple[Tensor, dict[str, float]]:
    """SFT CE + L2; when training, also the contrastive margin and the preservation KL if weighted."""
    cfg, n = run.cfg, len(batch)
    own = [d for d, _, _ in batch]
    contrast = train and cfg.w_margin > 0
    rules = run.data.rule_sets if cfg.margin_disjoint else None
    index = torch.tensor(own + (partners(own, rules) if contrast else []))
    uniq, inverse = torch.unique(index, return_inverse=True)
    weights = run.net.lora(run.data.emb[uniq].to(run.base.device), inverse.to(run.base.device))
    nll = sft_nll(run.base, batch + batch if contrast else batch, weights)
    ce = nll[:n].mean()
    l2 = sum(
        a.pow(2).mean() + b.pow(2).mean() for a, b in zip(weights.A.values(), weights.B.values(), strict=True)
    )
    l2 = l2 / len(weights.A)
    loss, stats = ce + cfg.w_l2 * l2, {"ce": ce.item(), "l2": l2.item()}
    if contrast:
        gap = nll[n:] - nll[:n]
        margin = F.relu(cfg.margin - gap).mean()
        loss = loss + cfg.w_margin * margin
        stats |= {"ce_other": nll[n:].mean().item(), "spec": gap.mean().item(), "margin": margin.item()}
    if train and cfg.w_preserve > 0:
        kl = preserve_kl(run, uniq[: cfg.preserve_adapters])
        loss = loss + cfg.w_preserve * kl
        stats["kl_general"] = kl.item()
    return loss, stats


def general_windows(base: BaseModel, cfg: T2LTrainConfig) -> list[list[int]]:
    """Windows of ``preserve_tokens`` general-text tokens after the first ``preserve_skip`` (which the
    evaluation's preservation measurement reads), so the measurement is not trained on."""
    ids = [t for text in general_texts() for t in base.tokenizer(text, add_special_tokens=False)["input_ids"]]
    rest, w = ids[cfg.preserve_skip :], cfg.preserve_tokens
    windows = [rest[i : i + w] for i in range(0, len(rest) - 1, w)]
    windows = [x for x in windows if len(x) >= 2]
    if not windows:
        raise T2LTrainError(f"no general text left after preserve_skip={cfg.preserve_skip} tokens")
    return windows


def preserve_kl(run: Run, descs: Tensor) -> Tensor:
    """KL(base || adapted), mean per token, on one general-text window read by each ``descs`` adapter."""
    windows = run.general or general_windows(run.base, run.cfg)
    run.general = windows
    ids = torch.tensor([windows[run.step % len(windows)]] * len(descs), device=run.base.device)
    with torch.no_grad():
        ref = F.log_softmax(run.base.model(input_ids=ids, use_cache=False).logits.float(), -1)
    weights = run.net.lora(run.data.emb[descs].to(run.base.device))
    with applied(run.base.model, weights):
        out = F.log_softmax(run.base.model(input_ids=ids, use_cache=False).logits.float(), -1)
    return (ref.exp() * (ref - out)).sum(-1).mean()


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    cfg: T2LTrainConfig
    base: BaseModel
    net: T2LHypernet
    opt: torch.optim.Optimizer
    data: Data
    out_dir: Path
    log: Log
    step: int = 0
    base_ce: dict[str, float] = field(default_factory=dict)  # validation CE of the base alone, once
    general: list[list[int]] = field(default_factory=list)  # preservation windows, built on first use


def setup(cfg: T2LTrainConfig, base: BaseModel, out_dir: Path, log: Log) -> Run:
    torch.manual_seed(cfg.seed)
    net_cfg = T2LConfig.from_base_model(
        base.model,
        targets=cfg.targets,
        latent=cfg.latent,
        rank=cfg.rank,
        alpha=cfg.alpha,
        encoder_layer=cfg.encoder_layer,
        zscore=cfg.zscore,
        base_model_id=base.model_id,
        base_weights_sha256=base.weights_sha256,
    )
    net = T2LHypernet(net_cfg).to(base.device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = time.perf_counter()
    data = build_data(base, cfg.encoder_layer, Path(out_dir) / "cache", cfg.seed, cfg.extra_combos)
    log(
        {
            "kind": "data",
            "descriptions": len(data.texts),
            "train_behaviours": len(data.train),
            "seconds": round(time.perf_counter() - start, 1),
        }
    )
    if cfg.init_from:
        warm_start(net, Path(cfg.init_from), base)
    if cfg.zscore:
        net.set_embedding_stats(data.emb[[i for _, descs in data.train for i in descs]].to(base.device))
    run = Run(cfg, base, net, opt, data, Path(out_dir), log)
    if (run.out_dir / "checkpoint" / "trainer.json").is_file():
        load_checkpoint(run, run.out_dir / "checkpoint")
    return run


def warm_start(net: T2LHypernet, ckpt: Path, base: BaseModel) -> None:
    """Copy a saved network's weights into ``net``; the shapes (targets, rank, latent) must match."""
    try:
        net.load_state_dict(load_t2l(ckpt, base.device, base).state_dict())
    except (RuntimeError, T2LError) as exc:
        raise T2LTrainError(f"cannot warm-start from {ckpt}: {str(exc).splitlines()[0]}") from exc


def lr_at(cfg: T2LTrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def validate(run: Run) -> dict[str, Any]:
    """Held-out CE: seen behaviours with unseen descriptions, unseen behaviours, and the base alone."""
    record: dict[str, Any] = {"kind": "eval", "step": run.step}
    for label in run.data.val:
        batch = val_batch(run.base, run.data, label, run.cfg)
        record[f"ce_{label}"] = round(net_loss(run, batch)[1]["ce"], 4)
        if label not in run.base_ce:
            run.base_ce[label] = round(sft_loss(run.base, batch, None).item(), 4)
        record[f"ce_{label}_base"] = run.base_ce[label]
    return record


def fit(run: Run) -> None:
    cfg = run.cfg
    deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
    stop = min(cfg.steps, cfg.stop_at_step or cfg.steps)
    window, tick = [], time.perf_counter()
    while run.step < stop and time.monotonic() < deadline:
        for group in run.opt.param_groups:
            group["lr"] = lr_at(cfg, run.step)
        loss, stats = net_loss(run, sample_batch(run.base, run.data, cfg, run.step), train=True)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        stats["grad_norm"] = nn.utils.clip_grad_norm_(run.net.parameters(), cfg.grad_clip).item()
        run.opt.step()
        run.step += 1
        window.append(stats)
        if run.step % cfg.log_every == 0 or run.step == stop:
            means = {k: round(sum(s[k] for s in window) / len(window), 4) for k in window[0]}
            sec = round((time.perf_counter() - tick) / len(window), 2)
            run.log(
                {"kind": "train", "step": run.step, "lr": lr_at(cfg, run.step - 1), "sec_per_step": sec}
                | means
            )
            window, tick = [], time.perf_counter()
        if cfg.eval_every and run.step % cfg.eval_every == 0:
            run.log(validate(run))
        if run.step % cfg.ckpt_every == 0:
            save_checkpoint(run)
    save_checkpoint(run)


# ---------------------------------------------------------------- checkpoints

_RESUMABLE = {"max_minutes", "stop_at_step", "log_every", "eval_every", "ckpt_every"}


def save_checkpoint(run: Run) -> Path:
    save_net = partial(save_t2l, run.net, training={"step": run.step})
    return write_checkpoint(run.out_dir, save_net, run.opt, {"step": run.step, "config": run.cfg.to_dict()})


def load_checkpoint(run: Run, ckpt: Path) -> None:
    meta = read_checkpoint_meta(ckpt)
    changed = changed_fields(T2LTrainConfig(**meta["config"]).to_dict(), run.cfg.to_dict(), _RESUMABLE)
    if changed:
        raise T2LTrainError(f"cannot resume from {ckpt}: the config differs in {changed}; use a new --out")
    run.net.load_state_dict(load_t2l(ckpt, run.base.device).state_dict())
    load_optimizer(run.opt, ckpt, meta["param_groups"])
    run.step = meta["step"]
    run.log({"kind": "resume", "step": run.step, "from": str(ckpt)})


def train_t2l(cfg: T2LTrainConfig, base: BaseModel, out_dir: Path, log: Log, command: str = "") -> Path:
    """Train (or resume) into ``out_dir``; returns ``out_dir/final`` (network + summary JSON)."""
    out_dir = Path(out_dir)
    log = jsonl_logger(out_dir / "metrics.jsonl", log)
    start = time.perf_counter()
    run = setup(cfg, base, out_dir, log)
    fit(run)
    final_eval = validate(run)
    log(final_eval | {"kind": "final"})
    summary = {
        "steps": run.step,
        "minutes_this_session": round((time.perf_counter() - start) / 60, 2),
        "threads": torch.get_num_threads(),
        "device": str(base.device),
        "train_config": cfg.to_dict(),
        "command": command,
        "heldout_ce": final_eval,
    }
    save_t2l(run.net, out_dir / "final", training=summary)
    return out_dir / "final"


# ---------------------------------------------------------------- the oracle


def lora_init(
    base: BaseModel, targets: list[str], rank: int, seed: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """PEFT's LoRA initialisation (A Kaiming-uniform, B zero) for every ``targets`` module, trainable."""
    from hypernet.lora import target_linears

    gen = torch.Generator().manual_seed(seed)
    A, B = {}, {}
    for t in targets:
        for path, lin in target_linears(base.model, t).items():
            bound = 1 / math.sqrt(lin.in_features)
            A[path] = (
                ((torch.rand(rank, lin.in_features, generator=gen) * 2 - 1) * bound)
                .to(base.device)
                .requires_grad_()
            )
            B[path] = torch.zeros(lin.out_features, rank, device=base.device, requires_grad=True)
    return A, B


def train_oracle(
    base: BaseModel,
    beh: Behaviour,
    steps: int = 60,
    batch: int = 8,
    lr: float = 3e-3,
    rank: int = 8,
    alpha: float = 16.0,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 0,
) -> LoraWeights:
    """A LoRA for one behaviour, trained by SFT directly on its training inputs (the oracle)."""
    A, B = lora_init(base, list(targets), rank, seed)
    opt = torch.optim.AdamW(list(A.values()) + list(B.values()), lr=lr, weight_decay=0.0)
    items = beh.inputs("train")
    for step in range(steps):
        rng = random.Random(f"{seed}:oracle:{beh.name}:{step}")
        exs = [example(base, beh, it, 0, 40) for it in rng.sample(items, min(batch, len(items)))]
        loss = sft_loss(base, exs, LoraWeights(A, B, alpha / rank))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return LoraWeights(A, B, alpha / rank).detach()


def main(argv: list[str] | None = None) -> None:
    """``python -m hypernet.t2l_train --out DIR --set KEY=VALUE``: the same run as ``instill train-t2l``."""
    from hypernet.base_model import load_base_model
    from hypernet.train import parse_overrides

    p = argparse.ArgumentParser(prog="python -m hypernet.t2l_train", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--base", default="smollm2-135m-instruct")
    p.add_argument("--model-cache", default=".instill/models", type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = T2LTrainConfig(**parse_overrides(args.set))
    base = load_base_model(args.base, args.model_cache, device=None)
    command = "python -m hypernet.t2l_train " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    final = train_t2l(cfg, base, args.out, lambda r: print(json.dumps(r), flush=True), command=command)
    print(f"final checkpoint: {final}", flush=True)


if __name__ == "__main__":
    main()
