"""`instill eval`: how much of a document the generators' adapters carry, on documents never trained on.

Two held-out sets: synthetic fact documents (``hypernet.data``, entities and values outside training)
and real text (``hypernet.corpus``, topics outside training). Their probes are never used to build an
adapter: the hypernetwork never sees held-out documents, and context distillation trains on its own
sentence probes (see hypernet.corpus for why the real-text probes cannot coincide with them).

Per section, the teacher-forced answer NLL (``hypernet.metrics.answer_nll``, mean per probe, then
per document) under five conditions: base; the bias LoRA alone; the document's own generated adapter;
the adapter generated from the next document (the control that exposes a constant adapter); the base
model with the document in context. Gap closed = mean(base - x) / mean(base - in-context) over
documents, with a bootstrap 95% interval; exact match of greedy answers. Then every generator
(``hypernet``, ``cd``, ``hypernet+cd``) on the same few documents, side by side, with wall time per
document. Results are a JSON-able dict (``run_eval``) and a markdown table (``to_markdown``).

With ``EvalConfig.corpus`` (a package corpus built by ``instill corpus build``), a third section,
``real_corpus``: held-out real documents by length (1, 2, 4 chunks) and by probe span type, gap closed
for own / wrong-document / bias-only adapters with CIs, multiple-choice accuracy, exact match, QA gate
pass rates (``run_eval(..., gate=...)``) and the generator variants side by side (``hypernet.eval_real``).

Reproduce without the CLI: ``python -m hypernet.generator_eval --help``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from hypernet import eval_real
from hypernet.base_model import BaseModel
from hypernet.corpus import corpus_document, load_corpus
from hypernet.data import DataConfig, Document, make_split, student_prompt
from hypernet.generators import D2L_GENERATORS, HypernetGenerator, make_generator
from hypernet.lora import LoraWeights
from hypernet.metrics import answer_nll, bootstrap_ci, bootstrap_ratio, exact_match, greedy_answer
from hypernet.probes import Probe

Log = Callable[[dict[str, Any]], None]
CONDITIONS = ("base", "bias", "own", "wrong", "in_context")
GENERATORS = ("hypernet", "cd", "hypernet+cd", "memory")
REAL_GENERATORS = ("hypernet", "cd:5", "cd:10", "cd:20", "hypernet+cd:2", "hypernet+cd:5")


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
    # The held-out package corpus (``instill corpus build``); None = no real_corpus section.
    corpus: str | None = None
    real_buckets: tuple[int, ...] = (1, 2, 4)  # document lengths, in chunks of the network
    real_bucket_docs: int | tuple[int, ...] = 8  # documents per length (or one count per length)
    real_knowledge_probes: int = 6
    real_continuation_probes: int = 2
    # Conditions whose greedy answers to the knowledge probes are scored by exact match (a batched
    # generate each; with the document in context it is the costliest measurement on long documents).
    real_em_conditions: tuple[str, ...] = ("base", "own", "in_context")
    real_gate_all: bool = False  # gate every document's hypernet adapter too (not only the comparison's)
    # Variants compared on the first ``real_generator_docs`` documents of every length up to
    # ``real_generator_max_chunks``: NAME[:STEPS].
    real_generators: tuple[str, ...] = REAL_GENERATORS
    real_generator_max_chunks: int = 4

    def __post_init__(self) -> None:
        counts = (self.synthetic_docs, self.real_docs, self.em_docs, self.real_em_docs)
        counts += (self.generator_docs, self.real_generator_docs)
        counts += (
            (self.real_bucket_docs,) if isinstance(self.real_bucket_docs, int) else self.real_bucket_docs
        )
        if min(counts) < 0 or self.synthetic_docs == 1:
            raise ValueError(f"EvalConfig: need synthetic_docs 0 or >= 2 and no negative counts: {self}")
        unknown = sorted(set(self.generators) - set(GENERATORS))
        unknown += sorted({eval_real.parse_variant(v)[0] for v in self.real_generators} - set(GENERATORS))
        if unknown:
            raise ValueError(f"EvalConfig: unknown generator(s) {unknown}; known: {list(GENERATORS)}")
        if not self.real_buckets or min(self.real_buckets) < 1:
            raise ValueError(f"EvalConfig: real_buckets must be chunk counts >= 1: {self.real_buckets}")
        if not isinstance(self.real_bucket_docs, int) and len(self.real_bucket_docs) != len(
            self.real_buckets
        ):
            raise ValueError("EvalConfig: real_bucket_docs needs one count per real_buckets entry")
        if set(self.real_em_conditions) - set(eval_real.CONDITIONS):
            raise ValueError(f"EvalConfig: real_em_conditions must be among {eval_real.CONDITIONS}")


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
    if name in D2L_GENERATORS and cfg.checkpoint:
        options.setdefault("checkpoint", cfg.checkpoint)
    return options


def run_eval(
    base: BaseModel, cfg: EvalConfig, log: Log = lambda record: None, gate: eval_real.Gate | None = None
) -> dict[str, Any]:
    """The full measurement: ``{"synthetic", "real", "generators", "real_corpus", ...}`` (module docstring).

    ``gate(base, adapter, document, other_document_text)`` -> bool, or a dict like
    ``tasks.qa.GateReport.to_dict()``: when given, the real_corpus section reports gate pass rates.
    """
    start = time.perf_counter()
    gen = make_generator("hypernet", base, _options("hypernet", cfg))
    if not isinstance(gen, HypernetGenerator):
        raise TypeError(f"generator 'hypernet' is registered as {type(gen).__name__}, not HypernetGenerator")
    synthetic = synthetic_heldout(cfg) if cfg.synthetic_docs else []
    result: dict[str, Any] = {}
    if synthetic:
        log({"kind": "eval-section", "section": "synthetic", "docs": len(synthetic)})
        result["synthetic"] = section(gen, synthetic, cfg.em_docs, cfg, log)
    real = real_heldout(cfg) if cfg.real_docs else []
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
    if cfg.corpus:
        result["real_corpus"] = eval_real.real_section(
            gen, cfg.corpus, cfg, log, gate, lambda name: _options(name, cfg)
        )
    result["meta"] = {
        "base_model_id": base.model_id,
        "base_model_sha256": base.weights_sha256,
        "checkpoint_sha256": gen.checkpoint_sha256,
        "hypernet_config": gen.describe()["config"],  # max_chunks and the memory's settings
        "device": str(base.device),
        "threads": torch.get_num_threads(),
        "config": asdict(cfg)
        | {
            "generators": list(cfg.generators),
            "real_buckets": list(cfg.real_buckets),
            "real_generators": list(cfg.real_generators),
            "real_em_conditions": list(cfg.real_em_conditions),
            "real_bucket_docs": cfg.real_bucket_docs
            if isinstance(cfg.real_bucket_docs, int)
            else list(cfg.real_bucket_docs),
            "gate": gate is not None,
        },
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
    if "real_corpus" in result:
        lines.append(eval_real.to_markdown(result["real_corpus"]))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[Any, EvalConfig]:
    """``python -m hypernet.generator_eval``: the same measurement as ``instill eval``, without gates."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m hypernet.generator_eval", description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="write the results here (the markdown beside it, .md)")
    p.add_argument("--base", default="smollm2-135m-instruct", help="base model alias or HF folder")
    p.add_argument("--models-dir", default=".instill/models", help="the base-model cache")
    p.add_argument("--checkpoint", default=None, help="hypernetwork folder (default: the shipped one)")
    p.add_argument("--corpus", default=None, help="package corpus folder (documents.jsonl, manifest.json)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--synthetic-docs", type=int, default=48)
    p.add_argument("--real-docs", type=int, default=24, help="python-docs held-out documents (0 = none)")
    p.add_argument("--generators", default=",".join(GENERATORS), help="the synthetic/python-docs comparison")
    p.add_argument("--generator-docs", type=int, default=4)
    p.add_argument("--real-generator-docs", type=int, default=2, help="per length in the corpus comparison")
    p.add_argument("--real-bucket-docs", default="8", help="corpus documents per length (or N,N,N)")
    p.add_argument("--real-buckets", default="1,2,4", help="document lengths in chunks")
    p.add_argument("--real-generators", default=",".join(REAL_GENERATORS), help="NAME[:STEPS],...")
    p.add_argument("--real-em", default="base,own,in_context", help="conditions scored by exact match")
    p.add_argument("--real-generator-max-chunks", type=int, default=4, help="longest length compared")
    p.add_argument("--real-gate-all", action="store_true", help="gate every document (with a gate)")
    args = p.parse_args(argv)
    split = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())  # noqa: E731
    bucket_docs = split(args.real_bucket_docs)
    cfg = EvalConfig(
        synthetic_docs=args.synthetic_docs,
        real_docs=args.real_docs,
        generators=split(args.generators),
        generator_docs=args.generator_docs,
        real_generator_docs=args.real_generator_docs,
        checkpoint=args.checkpoint,
        corpus=args.corpus,
        real_bucket_docs=int(bucket_docs[0]) if len(bucket_docs) == 1 else tuple(int(n) for n in bucket_docs),
        real_buckets=tuple(int(k) for k in split(args.real_buckets)),
        real_generators=split(args.real_generators),
        real_em_conditions=split(args.real_em),
        real_generator_max_chunks=args.real_generator_max_chunks,
        real_gate_all=args.real_gate_all,
    )
    return args, cfg


def main(argv: list[str] | None = None, gate: eval_real.Gate | None = None) -> dict[str, Any]:
    """Run ``instill eval`` from the command line (``gate``: for callers that have the QA gates)."""
    import json
    import sys
    from pathlib import Path

    from hypernet.base_model import load_base_model

    args, cfg = parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_base_model(args.base, Path(args.models_dir), device=args.device)
    result = run_eval(base, cfg, lambda r: print(json.dumps(r), file=sys.stderr, flush=True), gate)
    result["meta"]["command"] = "python -m hypernet.generator_eval " + " ".join(argv or sys.argv[1:])
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(to_markdown(result))
    return result


if __name__ == "__main__":  # pragma: no cover
    main()
