"""Does an instruction adapter keep working next to a knowledge adapter, and the knowledge next to it?

Serving applies the production instruction adapter (Text-to-LoRA: ``q_proj``/``v_proj``) together with
the knowledge adapter a question is routed to (Doc-to-LoRA / CD: ``down_proj``), both on the same base
model at once (``hypernet.lora.apply_together``). This measures the two behaviours side by side:

- compliance with a few task-suite behaviours (held-out descriptions and inputs, the suite's checkers):
  base, knowledge adapter alone, instruction adapter alone, both together;
- the knowledge adapter's answer NLL on its document's probes: base, knowledge alone, instruction alone,
  both together.

If the combination keeps both, "together" should sit near "instruction alone" in compliance and near
"knowledge alone" in NLL. ``instruction_scales`` adds "together" conditions with the instruction's update
scaled (``together@0.5``): the trade between the two as serving's ``instruction_scale`` would set it.
Small on purpose (a few behaviours, one document): minutes on one CPU thread.
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
ALONE = ("base", "knowledge", "instruction")


@dataclass(frozen=True)
class CombinedEvalConfig:
    # Seen behaviours the shipped checkpoint follows at least half of the time (docs/eval-t2l.md), so
    # that a loss of compliance next to the knowledge adapter can show.
    behaviours: tuple[str, ...] = ("prefix_sure", "xml", "sentiment", "one_word", "json_answer")
    descriptions: int = 2  # held-out descriptions per behaviour
    inputs: int = 3  # held-out inputs per description
    max_new_tokens: int = 40
    seed: int = 0
    instruction_scales: tuple[float, ...] = (1.0,)  # the instruction's scale in the "together" conditions

    def __post_init__(self) -> None:
        if not self.instruction_scales or any(s <= 0 for s in self.instruction_scales):
            raise ValueError("CombinedEvalConfig: instruction_scales must be positive numbers")

    @property
    def conditions(self) -> tuple[str, ...]:
        return ALONE + tuple(together(s) for s in self.instruction_scales)


def together(scale: float) -> str:
    """A "together" condition's name: ``together`` at full scale, ``together@0.5`` otherwise."""
    return "together" if scale == 1.0 else f"together@{scale:g}"


def _conditions(
    knowledge: LoraWeights, instruction: LoraWeights, cfg: CombinedEvalConfig
) -> dict[str, LoraWeights | None]:
    out: dict[str, LoraWeights | None] = {"base": None, "knowledge": knowledge, "instruction": instruction}
    for s in cfg.instruction_scales:
        out[together(s)] = apply_together([knowledge, instruction.scaled(s)])
    return out


def compliance(
    base: BaseModel, net: T2LHypernet, knowledge: LoraWeights, cfg: CombinedEvalConfig, log: Log
) -> dict[str, Any]:
    """Per condition, the share of (behaviour, description, input) examples whose output complies."""
    hits: dict[str, list[float]] = {c: [] for c in cfg.conditions}
    per_behaviour: dict[str, dict[str, float]] = {}
    samples = []
    for name in cfg.behaviours:
        beh = behaviour(name)
        items = list(beh.inputs("heldout"))[: cfg.inputs]
        mine: dict[str, list[float]] = {c: [] for c in cfg.conditions}
        for description in beh.descriptions("heldout")[: cfg.descriptions]:
            weights = _conditions(knowledge, describe_to_lora(base, net, description), cfg)
            for cond, w in weights.items():
                outs = greedy_answers(base, [it.question for it in items], w, cfg.max_new_tokens)
                mine[cond] += [float(beh.complies(it, o)) for it, o in zip(items, outs, strict=True)]
                if cond == "instruction" or cond.startswith("together"):
                    samples.append(
                        {"behaviour": name, "condition": cond, "input": items[0].question, "output": outs[0]}
                    )
        per_behaviour[name] = {c: statistics.fmean(v) for c, v in mine.items()}
        for c in cfg.conditions:
            hits[c] += mine[c]
        log({"behaviour": name, **per_behaviour[name]})
    rates = {c: _rate(v, cfg.seed) for c, v in hits.items()}
    minus = {}
    for s in cfg.instruction_scales:
        paired = zip(hits[together(s)], hits["instruction"], strict=True)
        minus[together(s)] = _rate([t - i for t, i in paired], cfg.seed)
    return {
        "rates": rates,
        "together_minus_instruction": minus,
        "per_behaviour": per_behaviour,
        "samples": samples[:6],
    }


def knowledge_nll(
    base: BaseModel, net: T2LHypernet, knowledge: LoraWeights, probes: list[Probe], cfg: CombinedEvalConfig
) -> dict[str, Any]:
    """Mean answer NLL (nats per token) of the document's probes per condition, with each behaviour's
    first held-out description as the instruction (the figure is the mean over those instructions)."""
    by_condition: dict[str, list[float]] = {c: [] for c in cfg.conditions}
    for name in cfg.behaviours:
        description = behaviour(name).descriptions("heldout")[0]
        for cond, w in _conditions(knowledge, describe_to_lora(base, net, description), cfg).items():
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
    conds = list(comp["rates"])
    names = {"knowledge": "knowledge alone", "instruction": "instruction alone", "together": "both together"}
    lines = [
        "| | " + " | ".join(names.get(c, c) for c in conds) + " |",
        "|---|" + "---|" * len(conds),
        "| compliance [95% CI] | " + " | ".join(_fmt(comp["rates"][c]) for c in conds) + " |",
        "| knowledge answer NLL (nats/token) | " + " | ".join(f"{nll[c]:.3f}" for c in conds) + " |",
        "",
    ]
    for cond, rate in comp["together_minus_instruction"].items():
        lines.append(f"{cond} minus instruction alone (compliance, paired): {_fmt(rate, True)}.")
    lines += ["", "| behaviour | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
    for name, rates in comp["per_behaviour"].items():
        lines.append(f"| {name} | " + " | ".join(f"{rates[c]:.2f}" for c in conds) + " |")
    return "\n".join(lines) + "\n"


def _fmt(rate: dict[str, Any], signed: bool = False) -> str:
    f = "{:+.2f}" if signed else "{:.2f}"
    lo, hi = rate["ci"]
    return f"{f.format(rate['mean'])} [{f.format(lo)}, {f.format(hi)}] (n={rate['n']})"
