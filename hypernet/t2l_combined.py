"""Does an instruction adapter keep working next to a knowledge adapter, and the knowledge next to it?

Serving applies the production instruction adapter (Text-to-LoRA: ``q_proj``/``v_proj``) together with
the knowledge adapter a question is routed to (Doc-to-LoRA / CD: ``down_proj``), both on the same base
model at once (``hypernet.lora.apply_together``). This measures the two behaviours side by side:

- compliance with a few task-suite behaviours (held-out descriptions and inputs, the suite's checkers):
  base, knowledge adapter alone, instruction adapter alone, both together;
- the knowledge adapter's answer NLL on its document's probes: base, knowledge alone, instruction alone,
  both together.

If the combination keeps both, "together" should sit near "instruction alone" in compliance and near
"knowledge alone" in NLL. Small on purpose (a few behaviours, one document): minutes on one CPU thread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from hypernet.base_model import BaseModel
from hypernet.lora import LoraWeights, apply_together
from hypernet.metrics import answer_nll, bootstrap_ci, greedy_answers
from hypernet.probes import Probe
from hypernet.t2l import T2LHypernet, describe_to_lora
from hypernet.t2l_tasks import behaviour

Log = Callable[[dict[str, Any]], None]
CONDITIONS = ("base", "knowledge", "instruction", "together")


@dataclass(frozen=True)
class CombinedEvalConfig:
    # Seen behaviours the shipped checkpoint follows at least half of the time (docs/eval-t2l.md), so
    # that a loss of compliance next to the knowledge adapter can show.
    behaviours: tuple[str, ...] = ("prefix_sure", "xml", "sentiment", "one_word", "json_answer")
    descriptions: int = 2  # held-out descriptions per behaviour
    inputs: int = 3  # held-out inputs per description
    max_new_tokens: int = 40
    seed: int = 0


def _conditions(knowledge: LoraWeights, instruction: LoraWeights) -> dict[str, LoraWeights | None]:
    return {
        "base": None,
        "knowledge": knowledge,
        "instruction": instruction,
        "together": apply_together([knowledge, instruction]),
    }


def compliance(
    base: BaseModel, net: T2LHypernet, knowledge: LoraWeights, cfg: CombinedEvalConfig, log: Log
) -> dict[str, Any]:
    """Per condition, the share of (behaviour, description, input) examples whose output complies."""
    hits: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    per_behaviour: dict[str, dict[str, float]] = {}
    samples = []
    for name in cfg.behaviours:
        beh = behaviour(name)
        items = list(beh.inputs("heldout"))[: cfg.inputs]
        mine: dict[str, list[float]] = {c: [] for c in CONDITIONS}
        for description in beh.descriptions("heldout")[: cfg.descriptions]:
            weights = _conditions(knowledge, describe_to_lora(base, net, description))
            for cond, w in weights.items():
                outs = greedy_answers(base, [it.question for it in items], w, cfg.max_new_tokens)
                mine[cond] += [float(beh.complies(it, o)) for it, o in zip(items, outs, strict=True)]
                if cond in ("instruction", "together"):
                    samples.append(
                        {"behaviour": name, "condition": cond, "input": items[0].question, "output": outs[0]}
                    )
        per_behaviour[name] = {c: statistics.fmean(v) for c, v in mine.items()}
        for c in CONDITIONS:
            hits[c] += mine[c]
        log({"behaviour": name, **per_behaviour[name]})
    rates = {c: _rate(v, cfg.seed) for c, v in hits.items()}
    diff = [t - i for t, i in zip(hits["together"], hits["instruction"], strict=True)]
    return {
        "rates": rates,
        "together_minus_instruction": _rate(diff, cfg.seed),
        "per_behaviour": per_behaviour,
        "samples": samples[:6],
    }


def knowledge_nll(
    base: BaseModel, net: T2LHypernet, knowledge: LoraWeights, probes: list[Probe], cfg: CombinedEvalConfig
) -> dict[str, Any]:
    """Mean answer NLL (nats per token) of the document's probes per condition, with each behaviour's
    first held-out description as the instruction (the figure is the mean over those instructions)."""
    by_condition: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    for name in cfg.behaviours:
        description = behaviour(name).descriptions("heldout")[0]
        for cond, w in _conditions(knowledge, describe_to_lora(base, net, description)).items():
            if cond in ("base", "knowledge") and by_condition[cond]:
                continue  # no instruction involved: the same figure for every behaviour
            by_condition[cond].append(statistics.fmean(answer_nll(base, probes, w)))
    return {c: statistics.fmean(v) for c, v in by_condition.items()}


def run_combined_eval(
    base: BaseModel,
    net: T2LHypernet,
    knowledge: LoraWeights,
    probes: list[Probe],
    cfg: CombinedEvalConfig,
    log: Log,
    **meta: Any,
) -> dict[str, Any]:
    started = time.perf_counter()
    result = {"config": asdict(cfg), **meta, "probes": len(probes)}
    result["compliance"] = compliance(base, net, knowledge, cfg, log)
    result["knowledge_nll"] = knowledge_nll(base, net, knowledge, probes, cfg)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _rate(values: list[float], seed: int) -> dict[str, Any]:
    lo, hi = bootstrap_ci(values, seed=seed)
    return {"mean": statistics.fmean(values), "ci": [lo, hi], "n": len(values)}


def to_markdown(result: dict[str, Any]) -> str:
    comp, nll = result["compliance"], result["knowledge_nll"]
    lines = [
        "| | base | knowledge alone | instruction alone | both together |",
        "|---|---|---|---|---|",
        "| compliance [95% CI] | " + " | ".join(_fmt(comp["rates"][c]) for c in CONDITIONS) + " |",
        "| knowledge answer NLL (nats/token) | " + " | ".join(f"{nll[c]:.3f}" for c in CONDITIONS) + " |",
        "",
        "Together minus instruction alone (compliance, paired): "
        + _fmt(comp["together_minus_instruction"], True)
        + ".",
        "",
        "| behaviour | " + " | ".join(CONDITIONS) + " |",
        "|---|" + "---|" * len(CONDITIONS),
    ]
    for name, rates in comp["per_behaviour"].items():
        lines.append(f"| {name} | " + " | ".join(f"{rates[c]:.2f}" for c in CONDITIONS) + " |")
    return "\n".join(lines) + "\n"


def _fmt(rate: dict[str, Any], signed: bool = False) -> str:
    f = "{:+.2f}" if signed else "{:.2f}"
    lo, hi = rate["ci"]
    return f"{f.format(rate['mean'])} [{f.format(lo)}, {f.format(hi)}] (n={rate['n']})"
