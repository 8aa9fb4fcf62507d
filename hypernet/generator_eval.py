"""`instill eval`: how much of a document the generators' adapters carry, on documents never trained on.

Two held-out sets: synthetic fact documents (``hypernet.data``, entities and values outside training)
and real text (``hypernet.corpus``, topics outside training). Their probes are never used to build an
adapter: the hypernetwork never sees held-out documents, and context distillation trains on its own
sentence probes (see hypernet.corpus for why the real-text probes cannot coincide with them).

Per section, the teacher-forced answer NLL (``hypernet.evaluate.answer_nll``, mean per probe, then
per document) under five conditions: base; the bias LoRA alone; the document's own generated adapter;
the adapter generated from the next document (the control that exposes a constant adapter); the base
model with the document in context. Gap closed = mean(base - x) / mean(base - in-context) over
documents, with a bootstrap 95% interval; exact match of greedy answers. Then every generator
(``hypernet``, ``cd``, ``hypernet+cd``) on the same few documents, side by side, with wall time per
document. Results are a JSON-able dict (``run_eval``) and a markdown table (``to_markdown``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from hypernet.base_model import BaseModel
from hypernet.corpus import corpus_document, load_corpus
from hypernet.data import DataConfig, Document, make_split, student_prompt
from hypernet.generators import HypernetGenerator, make_generator
from hypernet.lora import LoraWeights
from hypernet.metrics import answer_nll, bootstrap_ci, bootstrap_ratio, exact_match, greedy_answer
from hypernet.probes import Probe

Log = Callable[[dict[str, Any]], None]
CONDITIONS = ("base", "bias", "own", "wrong", "in_context")
GENERATORS = ("hypernet", "cd", "hypernet+cd")


@dataclass(frozen=True)
class EvalConfig:
    """What to measure; the defaults finish in about 10 minutes on one CPU thread (SmolLM2-135M)."""

    synthetic_docs: int = 48
    real_docs: int = 24
    em_docs: int = 12  # synthetic documents whose probes are also answered greedily
    real_em_docs: int = 6  # the same for real text (6 probes per document: greedy answers cost)
    generator_docs: int = 4  # synthetic documents every generator is run on, side by side
    real_generator_docs: int = 2  # real documents every generator is run on (CD costs most here)
    generators: tuple[str, ...] = GENERATORS
    generator_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per generator name
    checkpoint: str | None = None  # hypernet checkpoint (default: the shipped one)
    data_seed: int = 0  # the synthetic generator's seed (the training run's DataConfig.seed)
    eval_level: int = 2  # curriculum level of the held-out synthetic documents
    real_probes: int = 6
    max_new_tokens: int = 16
    seed: int = 0  # bootstrap

    def __post_init__(self) -> None:
        counts = (self.synthetic_docs, self.real_docs, self.em_docs, self.real_em_docs)
        counts += (self.generator_docs, self.real_generator_docs)
        if min(counts) < 0 or self.synthetic_docs < 2:
            raise ValueError(f"EvalConfig: need synthetic_docs >= 2 and no negative counts: {self}")
        unknown = sorted(set(self.generators) - set(GENERATORS))
        if unknown:
            raise ValueError(f"EvalConfig: unknown generator(s) {unknown}; known: {list(GENERATORS)}")


def synthetic_heldout(cfg: EvalConfig) -> list[Document]:
    data = DataConfig(seed=cfg.data_seed, n_heldout=cfg.synthetic_docs, eval_level=cfg.eval_level)
    return make_split(data, "heldout")


def real_heldout(cfg: EvalConfig) -> list[Document]:
    docs = [corpus_document(d, cfg.real_probes) for d in load_corpus("heldout")[: cfg.real_docs]]
    return [d for d in docs if d.questions]


def probes_of(doc: Document) -> list[Probe]:
    """The student's view of a document's questions (as in training: "... Answer in a few words.")."""
    return [Probe(student_prompt(q.text), q.answer) for q in doc.questions]


def doc_nll(base: BaseModel, doc: Document, weights: LoraWeights | None, context: bool = False) -> float:
    values = answer_nll(base, probes_of(doc), weights, doc.text if context else None)
    return sum(values) / len(values)


def em_rate(
    base: BaseModel, docs: Sequence[Document], adapters: Sequence[LoraWeights | None], cfg: EvalConfig
) -> float:
    """Fraction of the documents' probes whose greedy answer contains the gold answer."""
    hits = total = 0
    for doc, adapter in zip(docs, adapters, strict=True):
        for probe in probes_of(doc):
            answer = greedy_answer(base, probe.question, adapter, cfg.max_new_tokens)
            hits += exact_match(answer, probe.answer)
            total += 1
    return hits / max(total, 1)


def em_in_context(base: BaseModel, docs: Sequence[Document], cfg: EvalConfig) -> float:
    hits = total = 0
    for doc in docs:
        for probe in probes_of(doc):
            answer = greedy_answer(base, probe.question, None, cfg.max_new_tokens, context=doc.text)
            hits += exact_match(answer, probe.answer)
            total += 1
    return hits / max(total, 1)


def section(
    gen: HypernetGenerator, docs: list[Document], em_docs: int, cfg: EvalConfig, log: Log
) -> dict[str, Any]:
    """Five-condition NLL, gap closed with CIs, specificity and exact match for one held-out set."""
    base, n = gen.base, len(docs)
    start = time.perf_counter()
    adapters = [gen.generated(d.text)[0] for d in docs]
    seconds = (time.perf_counter() - start) / n
    bias = gen.net.bias_only()
    nll: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    for i, doc in enumerate(docs):
        nll["base"].append(doc_nll(base, doc, None))
        nll["bias"].append(doc_nll(base, doc, bias))
        nll["own"].append(doc_nll(base, doc, adapters[i]))
        nll["wrong"].append(doc_nll(base, doc, adapters[(i + 1) % n]))
        nll["in_context"].append(doc_nll(base, doc, None, context=True))
        if (i + 1) % 8 == 0 or i + 1 == n:
            log({"kind": "eval-progress", "docs": i + 1, "of": n})
    em = docs[:em_docs]
    adapters_em = adapters[: len(em)]
    exact = {
        "base": em_rate(base, em, [None] * len(em), cfg),
        "adapter": em_rate(base, em, adapters_em, cfg),
        "wrong_doc": em_rate(base, em, adapters_em[1:] + adapters_em[:1], cfg),
        "in_context": em_in_context(base, em, cfg),
    }
    return summarise(nll, cfg.seed) | {
        "nll_per_doc": {c: [round(v, 4) for v in values] for c, values in nll.items()},
        "exact_match": {k: round(v, 4) for k, v in exact.items()} | {"docs": len(em)},
        "docs": n,
        "probes": sum(len(d.questions) for d in docs),
        "hypernet_seconds_per_doc": round(seconds, 4),
    }


def summarise(nll: dict[str, list[float]], seed: int) -> dict[str, Any]:
    """Gap closed (ratio of means over documents, bootstrap CI) per condition; specificity in nats."""
    t = {c: torch.tensor(v, dtype=torch.float64) for c, v in nll.items()}
    gain = t["base"] - t["in_context"]

    def closed(cond: str) -> dict[str, float]:
        return bootstrap_ratio(t["base"] - t[cond], gain, seed)

    spec = (t["wrong"] - t["own"]).tolist()
    lo, hi = bootstrap_ci(spec, seed=seed)
    own, wrong = closed("own"), closed("wrong")
    bias = {"gap_closed_bias_only": closed("bias")["mean"]} if "bias" in t else {}
    return bias | {
        "gap_closed": own,
        "gap_closed_wrong_doc": wrong["mean"],
        "gap_closed_wrong_doc_ci": wrong,
        "gap_closed_minus_wrong_doc": round(own["mean"] - wrong["mean"], 4),
        "specificity_nats": {
            "mean": round(sum(spec) / len(spec), 4),
            "ci_low": round(lo, 4),
            "ci_high": round(hi, 4),
        },
        "specificity_positive": round(sum(s > 0 for s in spec) / len(spec), 4),
        "nll": {c: round(v.mean().item(), 4) for c, v in t.items()},
    }


def compare_generators(
    gen: HypernetGenerator, docs: list[Document], ref: dict[str, Any], cfg: EvalConfig, log: Log
) -> dict[str, dict[str, Any]]:
    """Every configured generator on the same documents: gap closed, wrong-document control, EM, time.

    ``docs`` are the first documents of a section whose result ``ref`` holds their base and in-context
    NLLs; exact match is measured on the synthetic set only (greedy answers of real text cost most).
    """
    base, k, out = gen.base, len(docs), {}
    reference = {c: ref["nll_per_doc"][c][:k] for c in ("base", "in_context")}
    greedy = docs[0].questions[0].fact != "continuation"
    for name in cfg.generators:
        generator = gen if name == "hypernet" else make_generator(name, base, _options(name, cfg))
        adapters, seconds = [], []
        for doc in docs:
            result = generator.generate(doc.text)
            adapters.append(result.weights)
            seconds.append(result.seconds)
        own = [doc_nll(base, d, adapters[i]) for i, d in enumerate(docs)]
        wrong = [doc_nll(base, d, adapters[(i + 1) % k]) for i, d in enumerate(docs)]
        s = summarise(reference | {"own": own, "wrong": wrong}, cfg.seed)
        out[name] = {
            "gap_closed": s["gap_closed"],
            "gap_closed_wrong_doc": s["gap_closed_wrong_doc"],
            "exact_match": round(em_rate(base, docs, adapters, cfg), 4) if greedy else None,
            "seconds_per_doc": round(sum(seconds) / k, 4),
            "specificity_nats": s["specificity_nats"],
            "nll_own": s["nll"]["own"],
            "docs": k,
            "fingerprint": generator.fingerprint(),
        }
        log({"kind": "eval-generator", "generator": name, "set": docs[0].doc_id, **out[name]})
    return out


def _options(name: str, cfg: EvalConfig) -> dict[str, Any]:
    options = dict(cfg.generator_options.get(name, {}))
    if name != "cd" and cfg.checkpoint:
        options.setdefault("checkpoint", cfg.checkpoint)
    return options


def run_eval(base: BaseModel, cfg: EvalConfig, log: Log = lambda record: None) -> dict[str, Any]:
    """The full measurement: ``{"synthetic", "real", "generators", ...}`` (see the module docstring)."""
    start = time.perf_counter()
    gen = make_generator("hypernet", base, _options("hypernet", cfg))
    if not isinstance(gen, HypernetGenerator):
        raise TypeError(f"generator 'hypernet' is registered as {type(gen).__name__}, not HypernetGenerator")
    synthetic = synthetic_heldout(cfg)
    log({"kind": "eval-section", "section": "synthetic", "docs": len(synthetic)})
    result: dict[str, Any] = {"synthetic": section(gen, synthetic, cfg.em_docs, cfg, log)}
    real = real_heldout(cfg)
    if len(real) >= 2:
        log({"kind": "eval-section", "section": "real", "docs": len(real)})
        result["real"] = section(gen, real, cfg.real_em_docs, cfg, log)
    sets = {"synthetic": synthetic[: cfg.generator_docs], "real": real[: cfg.real_generator_docs]}
    sets = {name: docs for name, docs in sets.items() if len(docs) >= 2}
    if sets and cfg.generators:
        per_set = {name: compare_generators(gen, docs, result[name], cfg, log) for name, docs in sets.items()}
        first = next(iter(per_set))  # synthetic when present: the flat figures
        result["generators"] = {
            g: per_set[first][g] | {other: per_set[other][g] for other in per_set if other != first}
            for g in cfg.generators
        }
        result["generator_docs"] = {name: len(docs) for name, docs in sets.items()} | {"flat": first}
    result["meta"] = {
        "base_model_id": base.model_id,
        "base_model_sha256": base.weights_sha256,
        "checkpoint_sha256": gen.checkpoint_sha256,
        "device": str(base.device),
        "threads": torch.get_num_threads(),
        "config": asdict(cfg) | {"generators": list(cfg.generators)},
        "minutes": round((time.perf_counter() - start) / 60, 2),
    }
    return result


def _fmt(value: Any) -> str:
    if isinstance(value, dict) and "mean" in value:
        return f"{value['mean']:.3f} [{value['ci_low']:.3f}, {value['ci_high']:.3f}]"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def to_markdown(result: dict[str, Any]) -> str:
    """The tables of README/docs: one per held-out set, one for the generators."""
    lines = []
    for name in ("synthetic", "real"):
        s = result.get(name)
        if not s:
            continue
        em = s["exact_match"]
        lines += [
            f"### Held-out {name} documents ({s['docs']} documents, {s['probes']} probes)",
            "",
            "| condition | answer NLL | gap closed [95% CI] | exact match |",
            "|---|---|---|---|",
            f"| base, no document | {s['nll']['base']:.3f} | 0 | {em['base']:.3f} |",
            f"| bias LoRA only | {s['nll']['bias']:.3f} | {s['gap_closed_bias_only']:.3f} | |",
            f"| own generated adapter | {s['nll']['own']:.3f} | {_fmt(s['gap_closed'])} "
            f"| {em['adapter']:.3f} |",
            f"| wrong-document adapter | {s['nll']['wrong']:.3f} | {_fmt(s['gap_closed_wrong_doc_ci'])} "
            f"| {em['wrong_doc']:.3f} |",
            f"| document in context | {s['nll']['in_context']:.3f} | 1 | {em['in_context']:.3f} |",
            "",
            f"Gap closed minus wrong-document gap closed: {s['gap_closed_minus_wrong_doc']:.3f}; "
            f"specificity (wrong - own NLL): {_fmt(s['specificity_nats'])} nats, positive for "
            f"{100 * s['specificity_positive']:.0f}% of documents. Exact match on the first {em['docs']} "
            f"documents. Generation: {s['hypernet_seconds_per_doc']:.3f} s per document.",
            "",
        ]
    gens = result.get("generators")
    if gens:
        counts = result["generator_docs"]
        lines += [
            "### Generators side by side (the first documents of each held-out set)",
            "",
            "| generator | set (documents) | gap closed [95% CI] | wrong-document gap closed | exact match "
            "| s per document |",
            "|---|---|---|---|---|---|",
        ]
        for name, g in gens.items():
            rows = [(counts["flat"], g)] + [(s, g[s]) for s in ("synthetic", "real") if s in g]
            for set_name, row in rows:
                em = "" if row.get("exact_match") is None else f"{row['exact_match']:.3f}"
                lines.append(
                    f"| {name} | {set_name} ({row['docs']}) | {_fmt(row['gap_closed'])} | "
                    f"{row['gap_closed_wrong_doc']:.3f} | {em} | {row['seconds_per_doc']:.2f} |"
                )
        lines.append("")
    return "\n".join(lines)
