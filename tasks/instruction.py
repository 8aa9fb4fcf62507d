"""Instruction documents: texts that describe behaviour, turned into Text-to-LoRA adapters, and their gate.

A document declares itself an instruction with YAML front matter::

    ---
    instill: {kind: instruction}
    ---
    Answer in one word.

Its body is then the description given to the ``t2l`` generator instead of a Doc-to-LoRA one. The QA
gate of an instruction adapter differs from a document's (there are no facts to probe):

- preservation: the general-text NLL may rise by at most ``max_nll_increase`` nats with the adapter;
- compliance: when the instruction matches a behaviour of the T2L task suite (word overlap with one of
  its descriptions), that behaviour's checker must accept at least ``min_compliance`` of the adapter's
  answers to its held-out inputs, and more than the base model's;
- otherwise effect: an arbitrary instruction has no checker, so the adapter must at least change the
  answer to ``min_effect`` of a set of generic questions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import yaml

PARSER = "instruction"  # document_versions.parser of an instruction's text (its body, front matter cut)
SUITE = "instruction"  # qa_results.suite of the instruction gate's metrics
FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n(.*))?\Z", re.S)
_WORD = re.compile(r"[a-z0-9]+")


class InstructionError(ValueError):
    """An instruction document is malformed; the message says how."""


def instruction_text(data: bytes, filename: str) -> str | None:
    """The body of a document that declares ``instill: {kind: instruction}``; None for other documents."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    m = FRONT_MATTER.match(text)
    if not m:
        return None
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:
        raise InstructionError(f"{filename}: front matter is not valid YAML: {exc}") from exc
    declared = meta.get("instill") if isinstance(meta, dict) else None
    if not isinstance(declared, dict) or "kind" not in declared:
        return None
    if declared["kind"] != "instruction":
        raise InstructionError(f"{filename}: unknown instill kind {declared['kind']!r} (known: instruction)")
    body = (m.group(2) or "").strip()
    if not body:
        raise InstructionError(
            f"{filename}: declares itself an instruction but has no text after the front matter"
        )
    return body


def read_instruction(data: bytes, filename: str, parsed_text: Callable[[], str], whole: bool) -> str | None:
    """The instruction a document gives, or None for a knowledge document.

    Its front matter decides first; otherwise ``whole`` (its source's ``content: instruction``) makes the
    document's parsed text (``parsed_text()``) the instruction. Raises ``InstructionError`` for a
    malformed declaration or an empty instruction, naming ``filename``."""
    body = instruction_text(data, filename)
    if body is not None or not whole:
        return body
    text = parsed_text().strip()
    if not text:
        raise InstructionError(f"{filename}: its source holds instructions but the document has no text")
    return text


@dataclass(frozen=True)
class InstructionGateConfig:
    max_nll_increase: float = 0.3
    min_compliance: float = 0.5
    min_effect: float = 0.25
    inputs: int = 8
    max_new_tokens: int = 40
    match_threshold: float = 0.6  # word-set Jaccard with a suite description to count as that behaviour
    preservation_tokens: int = 512


def matched_behaviour(description: str, threshold: float):
    """The task-suite behaviour whose description shares the most words with ``description``, if close."""
    from hypernet.t2l_tasks import SPLITS, behaviour

    words = set(_WORD.findall(description.lower()))
    best, best_score = None, 0.0
    for name in SPLITS["train"] + SPLITS["heldout"]:
        beh = behaviour(name)
        for desc in beh.descriptions("train") + beh.descriptions("heldout"):
            other = set(_WORD.findall(desc.lower()))
            score = len(words & other) / max(len(words | other), 1)
            if score > best_score:
                best, best_score = beh, score
    return (best, best_score) if best_score >= threshold else (None, best_score)


def instruction_gate(base, weights, description: str, cfg: InstructionGateConfig) -> dict[str, Any]:
    """Measure an instruction adapter and decide: ``{"passed", "failures", "metrics"}``."""
    from hypernet.metrics import general_texts, greedy_answers, text_nll
    from hypernet.t2l_inputs import pool

    texts = general_texts()
    increase = text_nll(base, texts, weights, cfg.preservation_tokens) - text_nll(
        base, texts, None, cfg.preservation_tokens
    )
    metrics: dict[str, Any] = {"nll_increase": round(increase, 4), "config": asdict(cfg)}
    failures = []
    if increase > cfg.max_nll_increase:
        failures.append(
            f"preservation: general-text NLL rose by {increase:.3f} nats (max {cfg.max_nll_increase})"
        )
    beh, score = matched_behaviour(description, cfg.match_threshold)
    metrics["matched_behaviour"], metrics["match_score"] = (beh.name if beh else None), round(score, 3)
    items = list(beh.inputs("heldout") if beh else pool("qa", "heldout"))[: cfg.inputs]
    questions = [it.question for it in items]
    with_adapter = greedy_answers(base, questions, weights, cfg.max_new_tokens)
    without = greedy_answers(base, questions, None, cfg.max_new_tokens)
    if beh is not None:
        rate = sum(beh.complies(it, o) for it, o in zip(items, with_adapter, strict=True)) / len(items)
        base_rate = sum(beh.complies(it, o) for it, o in zip(items, without, strict=True)) / len(items)
        metrics |= {"compliance": round(rate, 3), "base_compliance": round(base_rate, 3)}
        if rate < cfg.min_compliance or rate <= base_rate:
            failures.append(
                f"compliance: {rate:.2f} of answers follow {beh.name!r} (base {base_rate:.2f}; "
                f"need >= {cfg.min_compliance} and above the base)"
            )
    else:
        effect = sum(a != b for a, b in zip(with_adapter, without, strict=True)) / len(items)
        metrics["effect"] = round(effect, 3)
        if effect < cfg.min_effect:
            failures.append(f"effect: the adapter changed {effect:.2f} of answers (need >= {cfg.min_effect})")
    metrics["samples"] = [
        {"input": q, "adapter": a, "base": b}
        for q, a, b in zip(questions, with_adapter, without, strict=True)
    ][:3]
    return {"passed": not failures, "failures": failures, "metrics": metrics}


def verdict_rows(verdict: dict[str, Any], cfg: InstructionGateConfig, suite_version: str) -> list[dict]:
    """The gate's measurements as ``qa_results`` rows (suite ``instruction``), one per thresholded metric."""
    m = verdict["metrics"]
    detail = {k: m[k] for k in ("matched_behaviour", "match_score", "samples") if k in m}
    rows = [
        ("nll_increase", m["nll_increase"], cfg.max_nll_increase, m["nll_increase"] <= cfg.max_nll_increase)
    ]
    if "compliance" in m:
        ok = m["compliance"] >= cfg.min_compliance and m["compliance"] > m["base_compliance"]
        rows.append(("compliance", m["compliance"], cfg.min_compliance, ok))
        rows.append(("base_compliance", m["base_compliance"], None, True))
    else:
        rows.append(("effect", m["effect"], cfg.min_effect, m["effect"] >= cfg.min_effect))
    return [
        {
            "suite": SUITE,
            "suite_version": suite_version,
            "metric": name,
            "value": value,
            "threshold": threshold,
            "passed": bool(passed),
            "detail": detail,
        }
        for name, value, threshold, passed in rows
    ]
