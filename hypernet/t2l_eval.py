"""Measuring Text-to-LoRA: compliance, preservation and generation time, with the controls.

Two sets (``hypernet.t2l_tasks``): seen behaviours described by held-out descriptions, and behaviours
never trained on (held-out single rules and combinations of seen rules). Every example is one held-out
input of a behaviour with one held-out description; five conditions answer it by greedy decoding:

- ``t2l``: the adapter generated from the description, the input alone in the prompt;
- ``base``: the base model alone;
- ``prompt``: the description in the prompt before the input (in-context instruction following);
- ``random``: the adapter generated from another behaviour's description (the specificity control);
- ``oracle``: a LoRA trained by SFT on that behaviour directly (only for ``oracles``).

Compliance is the behaviour's checker on the output; rates come with percentile bootstrap CIs over
examples, differences with paired bootstrap CIs. Preservation is the mean NLL of the packaged general
texts with and without generated adapters; generation time is wall-clock per description.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hypernet.adapter import AdapterError, load_adapter, read_lineage, save_adapter
from hypernet.base_model import BaseModel, chat_ids
from hypernet.batching import pad_id
from hypernet.lora import LoraWeights, applied
from hypernet.metrics import bootstrap_ci, general_texts, text_nll
from hypernet.t2l import T2LHypernet, embed_descriptions, pooled_states
from hypernet.t2l_tasks import Behaviour, behaviour, behaviours
from hypernet.t2l_train import train_oracle

Log = Callable[[dict[str, Any]], None]
CONDITIONS = ("base", "prompt", "t2l", "random", "oracle")


@dataclass(frozen=True)
class T2LEvalConfig:
    seen: tuple[str, ...] = (
        "upper",
        "one_word",
        "json_answer",
        "lower",
        "prefix_sure",
        "suffix_hope",
        "bullets",
        "xml",
        "date_iso",
        "num_words",
        "refuse_geo",
        "sentiment",
    )
    unseen: tuple[str, ...] = ()  # empty: every held-out behaviour
    descriptions: int = 2  # held-out descriptions per behaviour
    inputs: int = 2  # held-out inputs per description
    max_new_tokens: int = 40
    batch: int = 16
    oracles: tuple[str, ...] = ("upper", "one_word", "json_answer", "one_word+upper")
    oracle_steps: int = 50
    oracle_lr: float = 3e-3
    oracle_dir: str | None = None  # PEFT folders of trained oracles, reused when present
    preservation_adapters: int = 4
    preservation_tokens: int = 1024
    probe_behaviours: int = 20  # encoder probe: behaviours, 6 training + 4 held-out descriptions each
    seed: int = 0


@dataclass
class Example:
    behaviour: Behaviour
    item: Any
    description: str
    random_description: str


def examples(cfg: T2LEvalConfig, split: str) -> list[Example]:
    """Held-out inputs x held-out descriptions of the set's behaviours, and a control description each."""
    names = cfg.seen if split == "seen" else (cfg.unseen or tuple(b.name for b in behaviours("heldout")))
    behs = [behaviour(n) for n in names]
    rng, out = random.Random(f"{cfg.seed}:t2l-eval:{split}"), []
    for k, beh in enumerate(behs):
        other = behs[(k + 1) % len(behs)]
        descs = rng.sample(beh.descriptions("heldout"), cfg.descriptions)
        items = list(beh.inputs("heldout"))
        rng.shuffle(items)
        for j, desc in enumerate(descs):
            for item in items[j * cfg.inputs : (j + 1) * cfg.inputs]:
                out.append(Example(beh, item, desc, rng.choice(other.descriptions("heldout"))))
    return out


@torch.no_grad()
def greedy(base: BaseModel, users: list[str], weights: LoraWeights | None, cfg: T2LEvalConfig) -> list[str]:
    """Greedy answers; ``weights`` may be batched (one adapter per user turn)."""
    tok, pad, out = base.tokenizer, pad_id(base.tokenizer), []
    for s in range(0, len(users), cfg.batch):
        prompts = [chat_ids(tok, u)[0] for u in users[s : s + cfg.batch]]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=base.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=base.device)
        w = weights
        if w is not None and next(iter(w.A.values())).dim() == 3:
            w = LoraWeights(
                {k: v[s : s + cfg.batch] for k, v in w.A.items()},
                {k: v[s : s + cfg.batch] for k, v in w.B.items()},
                w.scaling,
            )
        with applied(base.model, w):
            gen = base.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=cfg.max_new_tokens,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=pad,
            )
        out += [tok.decode(row[width:], skip_special_tokens=True).strip() for row in gen]
    return out


def generated(base: BaseModel, net: T2LHypernet, descriptions: list[str]) -> tuple[LoraWeights, list[float]]:
    """Batched adapters for ``descriptions`` and the seconds each took (embedding + network, one by one)."""
    embs, seconds = [], []
    for d in descriptions:
        start = time.perf_counter()
        emb = embed_descriptions(base, [d], net.cfg.encoder_layer).to(base.device)
        with torch.no_grad():
            net.generate(emb[0])
        seconds.append(time.perf_counter() - start)
        embs.append(emb[0])
    with torch.no_grad():
        return net.lora(torch.stack(embs)), seconds


def oracle_for(base: BaseModel, name: str, cfg: T2LEvalConfig, log: Log) -> LoraWeights:
    """The oracle LoRA of one behaviour: loaded from ``oracle_dir`` when trained alike, else trained."""
    folder = Path(cfg.oracle_dir) / name if cfg.oracle_dir else None
    recipe = {
        "behaviour": name,
        "steps": cfg.oracle_steps,
        "lr": cfg.oracle_lr,
        "seed": cfg.seed,
        "base_model_sha256": base.weights_sha256,
    }
    if folder is not None and (folder / "adapter_config.json").is_file():
        try:
            if read_lineage(folder).get("oracle") == recipe:
                return load_adapter(folder)
        except AdapterError:
            pass
    start = time.perf_counter()
    weights = train_oracle(base, behaviour(name), steps=cfg.oracle_steps, lr=cfg.oracle_lr, seed=cfg.seed)
    log({"kind": "oracle", "behaviour": name, "seconds": round(time.perf_counter() - start, 1)})
    if folder is not None:
        save_adapter(weights, folder, base.model_id, {"kind": "oracle", "oracle": recipe})
    return weights


def compliance(
    base: BaseModel, net: T2LHypernet, exs: list[Example], cfg: T2LEvalConfig, log: Log
) -> dict[str, Any]:
    """Per condition: each example's compliance (1/0) and output, in example order."""
    users = [e.item.question for e in exs]
    own, seconds = generated(base, net, [e.description for e in exs])
    rand, _ = generated(base, net, [e.random_description for e in exs])
    outputs = {
        "base": greedy(base, users, None, cfg),
        "prompt": greedy(
            base, [f"{e.description}\n\n{u}" for e, u in zip(exs, users, strict=True)], None, cfg
        ),
        "t2l": greedy(base, users, own, cfg),
        "random": greedy(base, users, rand, cfg),
    }
    oracle_out: list[str | None] = [None] * len(exs)
    for name in sorted({e.behaviour.name for e in exs} & set(cfg.oracles)):
        idx = [i for i, e in enumerate(exs) if e.behaviour.name == name]
        answers = greedy(base, [users[i] for i in idx], oracle_for(base, name, cfg, log), cfg)
        for i, a in zip(idx, answers, strict=True):
            oracle_out[i] = a
    outputs["oracle"] = oracle_out
    scores = {
        c: [
            None if o is None else int(e.behaviour.complies(e.item, o))
            for e, o in zip(exs, outs, strict=True)
        ]
        for c, outs in outputs.items()
    }
    return {"outputs": outputs, "scores": scores, "gen_seconds": seconds}


def _rate(values: list[int]) -> dict[str, float]:
    lo, hi = bootstrap_ci(values)
    return {
        "mean": round(sum(values) / len(values), 4),
        "ci_low": round(lo, 4),
        "ci_high": round(hi, 4),
        "n": len(values),
    }


def summarise(exs: list[Example], scores: dict[str, list[int | None]]) -> dict[str, Any]:
    """Rates per condition, paired differences, the oracle ratio on the oracle's behaviours, per behaviour."""
    rates = {
        c: _rate([s for s in v if s is not None]) for c, v in scores.items() if any(s is not None for s in v)
    }
    diffs = {}
    for other in ("base", "random", "prompt"):
        d = [a - b for a, b in zip(scores["t2l"], scores[other], strict=True)]
        diffs[f"t2l_minus_{other}"] = _rate(d)
    with_oracle = [i for i, s in enumerate(scores["oracle"]) if s is not None]
    oracle_pair = {}
    if with_oracle:
        t2l = [scores["t2l"][i] for i in with_oracle]
        orc = [scores["oracle"][i] for i in with_oracle]
        oracle_pair = {
            "t2l": _rate(t2l),
            "oracle": _rate(orc),
            "prompt": _rate([scores["prompt"][i] for i in with_oracle]),
            "ratio_t2l_over_oracle": round(sum(t2l) / max(sum(orc), 1), 4),
        }
    per_beh: dict[str, dict[str, float]] = {}
    for c, v in scores.items():
        for e, s in zip(exs, v, strict=True):
            if s is not None:
                per_beh.setdefault(e.behaviour.name, {}).setdefault(c, []).append(s)  # type: ignore[arg-type]
    per_beh = {b: {c: round(sum(x) / len(x), 3) for c, x in cs.items()} for b, cs in per_beh.items()}
    return {"rates": rates, "differences": diffs, "oracle_behaviours": oracle_pair, "per_behaviour": per_beh}


def preservation(base: BaseModel, net: T2LHypernet, cfg: T2LEvalConfig) -> dict[str, float]:
    """General-text NLL without and with generated adapters (mean over a few held-out descriptions)."""
    texts = general_texts()
    plain = text_nll(base, texts, None, cfg.preservation_tokens)
    descs = [behaviour(n).descriptions("heldout")[0] for n in cfg.seen[: cfg.preservation_adapters]]
    adapters, _ = generated(base, net, descs)
    nlls = []
    for i in range(len(descs)):
        one = LoraWeights(
            {k: v[i] for k, v in adapters.A.items()},
            {k: v[i] for k, v in adapters.B.items()},
            adapters.scaling,
        )
        nlls.append(text_nll(base, texts, one, cfg.preservation_tokens))
    return {
        "nll_base": round(plain, 4),
        "nll_with_adapter": round(statistics.mean(nlls), 4),
        "nll_increase": round(statistics.mean(nlls) - plain, 4),
        "adapters": len(descs),
    }


def encoder_probe(base: BaseModel, cfg: T2LEvalConfig) -> dict[str, float]:
    """Which pooled layer tells behaviours apart: nearest-centroid accuracy of held-out descriptions
    (centroids of 6 training descriptions per behaviour, cosine after LayerNorm), per layer."""
    behs = behaviours("train")[: cfg.probe_behaviours]
    train = [(k, d) for k, b in enumerate(behs) for d in b.descriptions("train")[::3][:6]]
    held = [(k, d) for k, b in enumerate(behs) for d in b.descriptions("heldout")[:4]]
    n_layers = base.model.config.num_hidden_layers
    layers = sorted({1, n_layers // 4, n_layers // 2, 3 * n_layers // 4, -1})
    states = pooled_states(base, [d for _, d in train + held], layers)
    states = torch.nn.functional.normalize(torch.nn.functional.layer_norm(states, states.shape[-1:]), dim=-1)
    tr, he = states[: len(train)], states[len(train) :]
    labels_tr = torch.tensor([k for k, _ in train])
    labels_he = torch.tensor([k for k, _ in held])
    out = {}
    for j, layer in enumerate(layers):
        centroids = torch.stack([tr[labels_tr == k, j].mean(0) for k in range(len(behs))])
        guess = (he[:, j] @ centroids.T).argmax(-1)
        out[f"layer_{layer if layer >= 0 else n_layers}"] = round(
            (guess == labels_he).float().mean().item(), 4
        )
    return out


def run_t2l_eval(
    base: BaseModel, net: T2LHypernet, cfg: T2LEvalConfig, log: Log, checkpoint: str = ""
) -> dict[str, Any]:
    start = time.perf_counter()
    result: dict[str, Any] = {
        "config": asdict(cfg),
        "checkpoint": checkpoint,
        "base_model": base.model_id,
        "threads": torch.get_num_threads(),
        "device": str(base.device),
        "sets": {},
    }
    seconds: list[float] = []
    for split in ("seen", "unseen"):
        exs = examples(cfg, split)
        got = compliance(base, net, exs, cfg, log)
        seconds += got["gen_seconds"]
        summary = summarise(exs, got["scores"])
        summary["samples"] = [
            {"behaviour": e.behaviour.name, "description": e.description, "input": e.item.question}
            | {c: got["outputs"][c][i] for c in CONDITIONS}
            for i, e in enumerate(exs)
        ]
        result["sets"][split] = summary
        log({"kind": "t2l_eval", "set": split, "rates": {c: r["mean"] for c, r in summary["rates"].items()}})
    result["preservation"] = preservation(base, net, cfg)
    result["encoder_probe"] = encoder_probe(base, cfg) if cfg.probe_behaviours else {}
    result["generation_seconds"] = {
        "median": round(statistics.median(seconds), 3),
        "max": round(max(seconds), 3),
    }
    result["minutes"] = round((time.perf_counter() - start) / 60, 2)
    return result


def to_markdown(result: dict[str, Any]) -> str:
    lines = ["| set | " + " | ".join(CONDITIONS) + " |", "|---" * (len(CONDITIONS) + 1) + "|"]
    for split, s in result["sets"].items():
        cells = []
        for c in CONDITIONS:
            r = s["rates"].get(c)
            cells.append(
                f"{r['mean']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] (n={r['n']})" if r else "-"
            )
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    lines += ["", "| set | difference | mean [95% CI] |", "|---|---|---|"]
    for split, s in result["sets"].items():
        for k, r in s["differences"].items():
            lines.append(f"| {split} | {k} | {r['mean']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] |")
    lines += [
        "",
        "| set | on the oracle's behaviours | t2l | oracle | prompt | t2l / oracle |",
        "|---|---|---|---|---|---|",
    ]
    for split, s in result["sets"].items():
        o = s["oracle_behaviours"]
        if o:
            lines.append(
                f"| {split} | {o['oracle']['n']} examples | {o['t2l']['mean']:.2f} | "
                f"{o['oracle']['mean']:.2f} | {o['prompt']['mean']:.2f} | {o['ratio_t2l_over_oracle']:.2f} |"
            )
    p = result["preservation"]
    lines += [
        "",
        f"Preservation: general-text NLL {p['nll_base']:.3f} -> {p['nll_with_adapter']:.3f} "
        f"({p['nll_increase']:+.3f} nats, {p['adapters']} adapters). Generation: median "
        f"{result['generation_seconds']['median']:.2f} s per description.",
    ]
    if result.get("encoder_probe"):
        probe = ", ".join(f"{k} {v:.2f}" for k, v in result["encoder_probe"].items())
        lines += ["", f"Encoder probe (nearest-centroid accuracy of held-out descriptions): {probe}."]
    return "\n".join(lines) + "\n"
