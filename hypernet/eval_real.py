"""`instill eval` on held-out real documents of the package corpus: what a user would believe.

Documents come from the held-out split of a corpus built by ``instill corpus build`` (whole Debian
documentation packages the hypernetwork never trained on), grouped by length in chunks of the
network's ``chunk_tokens``: a *k-chunk document* has between (k - 1/2) and k chunks' worth of tokens;
it is one corpus document, or consecutive documents of one package joined by a blank line when no
single document is that long. Packages are interleaved, so no bucket is one package's.

Probes (``hypernet.corpus.probe_document``): knowledge probes on informative spans (date, version,
number, identifier, name, term) and a few continuation probes; every figure is given overall and per
span type. Per document and probe, under five conditions (base; the bias LoRA alone; the document's own
generated adapter; the adapter of the next document of the same length; the base model with the
document in context):

* answer NLL (teacher-forced, mean per token) -> **gap closed** = mean(base - x) / mean(base - in context)
  over documents, with a 95% bootstrap interval resampling documents; also own minus wrong-document and
  own minus bias-only, as ratios with their own intervals (the issue's targets);
* **multiple choice**: the gold answer and three wrong answers of the same span type drawn from other
  held-out documents (``hypernet.spans.distractors``) are scored by mean-token NLL; correct when the gold
  one is strictly lowest (chance 0.25). Pooled over probes, interval resampling documents;
* **greedy exact match** on the knowledge probes;
* **QA gate pass rate** when a ``gate`` callable is given (the gates live in ``tasks.qa``, which this
  package must not import: the caller passes them in, see ``Gate``).

Then every generator variant ("hypernet", "cd:5", "hypernet+cd:2", ...: name and optional step count)
on the first documents of every length, side by side: seconds per document, gap closed, the
wrong-document control, multiple choice, exact match, gate pass rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hypernet.base_model import BaseModel
from hypernet.corpus import RealDocument, load_package_corpus, probe_document
from hypernet.data import Document, student_prompt
from hypernet.generators import HypernetGenerator, make_generator
from hypernet.lora import LoraWeights
from hypernet.metrics import answer_nll, bootstrap_ratio, exact_match, greedy_answers
from hypernet.probes import Probe
from hypernet.spans import SPAN_TYPES, KnowledgeProbe, distractors

Log = Callable[[dict[str, Any]], None]
# gate(base, adapter, document, another document's text) -> passed, or a dict with "passed" and
# optionally "gates": {name: {"passed": bool} | bool} (tasks.qa.GateReport.to_dict() has this shape).
Gate = Callable[[BaseModel, LoraWeights, Document, str], Any]

CONDITIONS = ("base", "bias", "own", "wrong", "in_context")
ADAPTER_CONDITIONS = ("bias", "own", "wrong")
CHOICES = 4  # gold + 3 distractors: chance 0.25
KNOWLEDGE = "knowledge"  # every span type together (all probes but continuation)


@dataclass(frozen=True)
class RealDoc:
    """One evaluation document: its probes, its length bucket and the corpus documents it joins."""

    doc: Document
    package: str
    chunks: int  # the bucket
    tokens: int
    parts: tuple[str, ...]  # corpus doc_ids joined


# ---------------------------------------------------------------- documents by length


def token_counter(base: BaseModel) -> Callable[[str], int]:
    tok = base.tokenizer
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def select_documents(
    corpus: Sequence[RealDocument],
    count: Callable[[str], int],
    chunk_tokens: int,
    buckets: Sequence[int],
    per_bucket: int | Sequence[int],
    n_knowledge: int = 6,
    n_continuation: int = 2,
    min_knowledge: int = 2,
    seed: int = 0,
) -> dict[int, list[RealDoc]]:
    """Up to ``per_bucket`` documents of each length ``k`` in ``buckets`` (tokens in ((k-1/2)C, kC]).

    Deterministic in the corpus order: each package's documents are walked in file order and joined
    until the window is reached (a run overshooting it is restarted at its second document); packages
    take turns; no corpus document is used twice; documents with fewer than ``min_knowledge`` knowledge
    probes are skipped.
    """
    by_package: dict[str, list[RealDocument]] = {}
    for d in corpus:
        by_package.setdefault(d.package, []).append(d)
    used: set[str] = set()
    tokens: dict[str, int] = {}

    def n_tokens(d: RealDocument) -> int:
        if d.doc_id not in tokens:
            tokens[d.doc_id] = count(d.text)
        return tokens[d.doc_id]

    def candidates(docs: list[RealDocument], k: int):
        lo, hi = (k - 0.5) * chunk_tokens, k * chunk_tokens
        i = 0
        while i < len(docs):
            run, total = [], 0
            for d in docs[i:]:
                if d.doc_id in used or total > hi:
                    break
                run.append(d)
                total += n_tokens(d)
                if total >= lo:
                    break
            if run and lo <= total <= hi:
                text = "\n\n".join(d.text for d in run)
                exact = count(text)
                if lo <= exact <= hi and not any(d.doc_id in used for d in run):
                    yield run, text, exact
                    i += len(run)
                    continue
            i += 1

    counts = [per_bucket] * len(buckets) if isinstance(per_bucket, int) else list(per_bucket)
    if len(counts) != len(buckets):
        raise ValueError(f"select_documents: {len(counts)} document counts for {len(buckets)} lengths")
    out: dict[int, list[RealDoc]] = {}
    for k, wanted in sorted(zip(buckets, counts, strict=True)):
        streams = [candidates(docs, k) for _, docs in sorted(by_package.items())]
        chosen: list[RealDoc] = []
        while streams and len(chosen) < wanted:
            alive = []
            for stream in streams:
                if len(chosen) >= wanted:
                    break
                for run, text, exact in stream:
                    if any(d.doc_id in used for d in run):
                        continue
                    doc_id = run[0].doc_id if len(run) == 1 else f"{run[0].doc_id}+{len(run) - 1}"
                    doc = probe_document(doc_id, text, n_knowledge, n_continuation, seed)
                    if sum(q.fact != "continuation" for q in doc.questions) < min_knowledge:
                        continue
                    used.update(d.doc_id for d in run)
                    chosen.append(RealDoc(doc, run[0].package, k, exact, tuple(d.doc_id for d in run)))
                    alive.append(stream)
                    break
            streams = alive
        out[k] = chosen
    return out


# ---------------------------------------------------------------- per-document measurement


def choice_sets(docs: Sequence[RealDoc], seed: int = 0) -> dict[str, list[list[str]]]:
    """Per document id, per probe: [gold, 3 same-type wrong answers from other documents] ([] if none)."""
    pools = {
        d.doc.doc_id: [KnowledgeProbe(q.text, q.answer, q.fact, "") for q in d.doc.questions] for d in docs
    }
    out: dict[str, list[list[str]]] = {}
    for d in docs:
        others = [p for doc_id, probes in pools.items() if doc_id != d.doc.doc_id for p in probes]
        sets = []
        for probe in pools[d.doc.doc_id]:
            try:
                sets.append([probe.answer, *distractors(probe, others, CHOICES - 1, seed)])
            except ValueError:
                sets.append([probe.answer])
        out[d.doc.doc_id] = sets
    return out


def score(
    base: BaseModel,
    doc: Document,
    choices: list[list[str]],
    weights: LoraWeights | None,
    context: bool = False,
) -> tuple[list[float], list[bool | None]]:
    """Gold-answer NLL per probe, and whether the gold answer has the lowest NLL among its choices
    (None where the probe has no distractors). One batched ``answer_nll`` over every candidate."""
    flat = [
        Probe(student_prompt(q.text), answer) for q, options in zip(doc.questions, choices, strict=True)
        for answer in options
    ]  # fmt: skip
    nll = answer_nll(base, flat, weights, doc.text if context else None)
    gold, correct, i = [], [], 0
    for options in choices:
        values = nll[i : i + len(options)]
        i += len(options)
        gold.append(values[0])
        correct.append(all(values[0] < v for v in values[1:]) if len(values) == CHOICES else None)
    return gold, correct


def greedy_hits(
    base: BaseModel, doc: Document, weights: LoraWeights | None, max_new_tokens: int, context: bool = False
) -> list[bool | None]:
    """Exact match of the greedy answer per probe (knowledge probes only; None for continuation)."""
    idx = [i for i, q in enumerate(doc.questions) if q.fact != "continuation"]
    questions = [student_prompt(doc.questions[i].text) for i in idx]
    answers = greedy_answers(base, questions, weights, max_new_tokens, doc.text if context else None)
    hits: list[bool | None] = [None] * len(doc.questions)
    for i, answer in zip(idx, answers, strict=True):
        hits[i] = exact_match(answer, doc.questions[i].answer)
    return hits


def gate_verdict(result: Any) -> dict[str, Any]:
    """A gate's return value as {"passed": bool, "gates": {name: bool}}."""
    if isinstance(result, dict):
        gates = {
            name: bool(v["passed"] if isinstance(v, dict) else v)
            for name, v in result.get("gates", {}).items()
        }
        return {"passed": bool(result["passed"]), "gates": gates}
    return {"passed": bool(result), "gates": {}}


def measure(
    base: BaseModel,
    d: RealDoc,
    choices: list[list[str]],
    adapters: dict[str, LoraWeights | None],
    cfg_em: int | None,
    gate: Gate | None = None,
    other_text: str = "",
    em_conditions: Sequence[str] = CONDITIONS,
) -> dict[str, Any]:
    """One document's record: per probe its kind and, per condition, NLL, MC and EM; the gate verdict.

    ``adapters`` maps condition -> weights (``in_context`` is the base model with the document in its
    prompt; pass ``None`` for base). ``cfg_em``: max new tokens of greedy answers, None = no EM.
    """
    probes = [{"kind": q.fact, "nll": {}, "mc": {}, "em": {}} for q in d.doc.questions]
    for cond, weights in adapters.items():
        context = cond == "in_context"
        gold, correct = score(base, d.doc, choices, weights, context)
        greedy = cfg_em and cond in em_conditions
        hits = greedy_hits(base, d.doc, weights, cfg_em, context) if greedy else [None] * len(probes)
        for p, g, c, h in zip(probes, gold, correct, hits, strict=True):
            p["nll"][cond] = round(g, 4)
            if c is not None:
                p["mc"][cond] = c
            if h is not None:
                p["em"][cond] = h
    record: dict[str, Any] = {
        "doc_id": d.doc.doc_id, "package": d.package, "chunks": d.chunks, "tokens": d.tokens,
        "probes": probes,
    }  # fmt: skip
    if gate is not None and adapters.get("own") is not None:
        record["gate"] = gate_verdict(gate(base, adapters["own"], d.doc, other_text))
    return record


# ---------------------------------------------------------------- summaries


def _kind_filter(kind: str | None) -> Callable[[str], bool]:
    if kind is None:
        return lambda k: True
    if kind == KNOWLEDGE:
        return lambda k: k != "continuation"
    return lambda k: k == kind


def summarise(records: Sequence[dict[str, Any]], kind: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Gap closed, multiple choice, exact match and gate pass rate over documents (probes of ``kind``)."""
    keep = _kind_filter(kind)
    rows = [(r, [p for p in r["probes"] if keep(p["kind"])]) for r in records]
    rows = [(r, ps) for r, ps in rows if ps]
    out: dict[str, Any] = {"docs": len(rows), "probes": sum(len(ps) for _, ps in rows)}
    if not rows:
        return out
    conds = [c for c in CONDITIONS if all(c in p["nll"] for _, ps in rows for p in ps)]
    nll = {
        c: torch.tensor([sum(p["nll"][c] for p in ps) / len(ps) for _, ps in rows], dtype=torch.float64)
        for c in conds
    }
    out["nll"] = {c: round(v.mean().item(), 4) for c, v in nll.items()}
    if {"base", "in_context"} <= nll.keys():
        gain = nll["base"] - nll["in_context"]
        out["gap_closed"] = {
            c: bootstrap_ratio(nll["base"] - nll[c], gain, seed) for c in ADAPTER_CONDITIONS if c in nll
        }
        for other in ("wrong", "bias"):
            if {"own", other} <= nll.keys():
                out[f"own_minus_{other}"] = bootstrap_ratio(nll[other] - nll["own"], gain, seed)
    for metric in ("mc", "em"):
        rates = {}
        for c in CONDITIONS:
            hits = [[p[metric][c] for p in ps if c in p[metric]] for _, ps in rows]
            pairs = [(sum(h), len(h)) for h in hits if h]
            if pairs:
                num = torch.tensor([float(a) for a, _ in pairs], dtype=torch.float64)
                den = torch.tensor([float(b) for _, b in pairs], dtype=torch.float64)
                rates[c] = bootstrap_ratio(num, den, seed) | {"probes": int(den.sum().item())}
        if rates:
            out["multiple_choice" if metric == "mc" else "exact_match"] = rates
    gated = [r["gate"] for r, _ in rows if "gate" in r]
    if gated:
        names = sorted({n for g in gated for n in g["gates"]})
        out["gate_pass_rate"] = {
            "all": round(sum(g["passed"] for g in gated) / len(gated), 4),
            **{n: round(sum(g["gates"].get(n, False) for g in gated) / len(gated), 4) for n in names},
            "docs": len(gated),
        }
        if {"knowledge", "specificity"} <= set(names):
            both = sum(g["gates"]["knowledge"] and g["gates"]["specificity"] for g in gated)
            out["gate_pass_rate"]["knowledge+specificity"] = round(both / len(gated), 4)
    seconds = [r["seconds"] for r, _ in rows if "seconds" in r]
    if seconds:
        out["seconds_per_doc"] = round(sum(seconds) / len(seconds), 4)
    return out


def breakdown(records: Sequence[dict[str, Any]], buckets: Sequence[int], seed: int) -> dict[str, Any]:
    """Overall, by length (chunks) and by span type (``knowledge`` = every span type together)."""
    kinds = sorted({p["kind"] for r in records for p in r["probes"]})
    types = [KNOWLEDGE] + [k for k in (*SPAN_TYPES, "continuation") if k in kinds]
    return {
        "overall": summarise(records, None, seed),
        "by_chunks": {
            str(k): summarise([r for r in records if r["chunks"] == k], None, seed)
            | {"knowledge": summarise([r for r in records if r["chunks"] == k], KNOWLEDGE, seed)}
            for k in buckets
        },
        "by_type": {t: summarise(records, t, seed) for t in types},
    }


# ---------------------------------------------------------------- the section


def parse_variant(spec: str) -> tuple[str, int | None]:
    """ "cd:10" -> ("cd", 10); "hypernet" -> ("hypernet", None)."""
    name, _, steps = spec.partition(":")
    if steps and (not steps.isdigit() or name == "hypernet"):
        raise ValueError(
            f"generator variant {spec!r}: expected NAME or NAME:STEPS (STEPS for cd, hypernet+cd)"
        )
    return name, int(steps) if steps else None


def real_section(
    gen: HypernetGenerator,
    corpus_dir: str | Path,
    cfg: Any,  # hypernet.generator_eval.EvalConfig
    log: Log,
    gate: Gate | None = None,
    options: Callable[[str], dict[str, Any]] = lambda name: {},
) -> dict[str, Any]:
    """The held-out package-corpus section of ``run_eval`` (see the module docstring)."""
    base = gen.base
    start = time.perf_counter()
    corpus, manifest_sha = load_package_corpus(Path(corpus_dir), "heldout")
    buckets = tuple(cfg.real_buckets)
    chunk_tokens = gen.net.cfg.chunk_tokens
    selected = select_documents(
        corpus, token_counter(base), chunk_tokens, buckets, cfg.real_bucket_docs,
        cfg.real_knowledge_probes, cfg.real_continuation_probes, seed=cfg.seed,
    )  # fmt: skip
    docs = [d for k in buckets for d in selected[k] if len(selected[k]) >= 2]
    log({"kind": "eval-section", "section": "real_corpus", "docs": len(docs),
         "by_chunks": {k: len(v) for k, v in selected.items()}})  # fmt: skip
    if len(docs) < 2:
        return {"docs": 0, "corpus": str(corpus_dir), "note": "fewer than two documents in every length"}
    choices = choice_sets(docs, cfg.seed)
    bias = gen.net.bias_only()
    own: dict[str, LoraWeights] = {}
    seconds: dict[str, float] = {}
    for d in docs:
        result = gen.generate(d.doc.text)
        own[d.doc.doc_id], seconds[d.doc.doc_id] = result.weights, result.seconds
    records = []
    for i, d in enumerate(docs):
        nxt = next_same_length(docs, i)
        adapters = {"base": None, "bias": bias, "own": own[d.doc.doc_id], "wrong": own[nxt.doc.doc_id],
                    "in_context": None}  # fmt: skip
        em = cfg.max_new_tokens if cfg.real_em_conditions else None
        main_gate = gate if cfg.real_gate_all else None
        record = measure(
            base, d, choices[d.doc.doc_id], adapters, em, main_gate, nxt.doc.text, cfg.real_em_conditions
        )
        records.append(record | {"seconds": round(seconds[d.doc.doc_id], 4)})
        if (i + 1) % 4 == 0 or i + 1 == len(docs):
            log({"kind": "eval-progress", "section": "real_corpus", "docs": i + 1, "of": len(docs)})
    out: dict[str, Any] = {
        "corpus": str(corpus_dir),
        "manifest_sha256": manifest_sha,
        "chunk_tokens": chunk_tokens,
        "buckets": {
            str(k): {
                "docs": len(v),
                "tokens_mean": round(sum(d.tokens for d in v) / max(len(v), 1), 1),
                "joined": sum(len(d.parts) > 1 for d in v),
                "packages": len({d.package for d in v}),
            }
            for k, v in selected.items()
        },  # fmt: skip
        **breakdown(records, buckets, cfg.seed),
        "hypernet_seconds_per_doc": round(sum(seconds.values()) / len(seconds), 4),
    }
    variants = [v for v in cfg.real_generators]
    if variants and cfg.real_generator_docs >= 2:
        short = [k for k in buckets if k <= cfg.real_generator_max_chunks]
        subset = [d for k in short for d in [x for x in docs if x.chunks == k][: cfg.real_generator_docs]]
        ref = {r["doc_id"]: r for r in records}
        out["generators"] = {
            spec: compare(gen, spec, subset, choices, ref, own, seconds, cfg, log, gate, options)
            for spec in variants
        }
        out["generator_docs"] = {str(k): sum(d.chunks == k for d in subset) for k in short}
    out["per_doc"] = records
    out["minutes"] = round((time.perf_counter() - start) / 60, 2)
    return out


def compare(
    gen: HypernetGenerator,
    spec: str,
    docs: list[RealDoc],
    choices: dict[str, list[list[str]]],
    ref: dict[str, dict[str, Any]],
    own_hypernet: dict[str, LoraWeights],
    seconds_hypernet: dict[str, float],
    cfg: Any,
    log: Log,
    gate: Gate | None,
    options: Callable[[str], dict[str, Any]],
) -> dict[str, Any]:
    """One generator variant on ``docs``: own and next-same-length adapters, reusing base/in-context."""
    name, steps = parse_variant(spec)
    if name == "hypernet":
        adapters, seconds = own_hypernet, seconds_hypernet
    else:
        opts = options(name) | ({"steps": steps} if steps is not None else {})
        generator = make_generator(name, gen.base, opts)
        adapters, seconds = {}, {}
        for d in docs:
            result = generator.generate(d.doc.text)
            adapters[d.doc.doc_id], seconds[d.doc.doc_id] = result.weights, result.seconds
            log({"kind": "eval-generator-doc", "generator": spec, "doc": d.doc.doc_id, "chunks": d.chunks,
                 "seconds": round(result.seconds, 3)})  # fmt: skip
    records = []
    for i, d in enumerate(docs):
        nxt = next_same_length(docs, i)
        conds = {"own": adapters[d.doc.doc_id], "wrong": adapters[nxt.doc.doc_id]}
        em = cfg.max_new_tokens if "own" in cfg.real_em_conditions else None
        rec = measure(gen.base, d, choices[d.doc.doc_id], conds, em, gate, nxt.doc.text, ("own",))
        for p, p_ref in zip(rec["probes"], ref[d.doc.doc_id]["probes"], strict=True):
            for metric in ("nll", "mc", "em"):
                for c in ("base", "in_context"):
                    if c in p_ref[metric]:
                        p[metric][c] = p_ref[metric][c]
        records.append(rec | {"seconds": round(seconds[d.doc.doc_id], 4)})
    buckets = sorted({d.chunks for d in docs})
    out = breakdown(records, buckets, cfg.seed)
    result = {
        "overall": out["overall"] | {"knowledge": out["by_type"][KNOWLEDGE]},
        "by_chunks": out["by_chunks"],
        "docs": len(docs),
    }
    log({"kind": "eval-generator", "generator": spec, "docs": len(docs),
         "seconds_per_doc": result["overall"].get("seconds_per_doc"),
         "gap_closed": result["overall"].get("gap_closed", {}).get("own")})  # fmt: skip
    return result


def next_same_length(docs: Sequence[RealDoc], i: int) -> RealDoc:
    """The next document of the same length bucket (cyclically): the wrong-document control."""
    same = [d for d in docs if d.chunks == docs[i].chunks]
    j = same.index(docs[i])
    return same[(j + 1) % len(same)]


# ---------------------------------------------------------------- markdown


def _ci(v: dict[str, float] | None) -> str:
    if not v:
        return ""
    return f"{v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"


def _m(v: dict[str, float] | None) -> str:
    return "" if not v else f"{v['mean']:.3f}"


def to_markdown(s: dict[str, Any]) -> str:
    """The tables of the held-out real-document section."""
    if not s.get("docs", 1) or "overall" not in s:
        return ""
    o = s["overall"]
    buckets = s["buckets"]
    sizes = ", ".join(
        f"{k} chunk(s): {b['docs']} (~{b['tokens_mean']:.0f} tokens)" for k, b in buckets.items()
    )
    lines = [
        f"### Held-out real documents ({o['docs']} documents, {o['probes']} probes; {sizes}; "
        f"chunk = {s['chunk_tokens']} tokens)",
        "",
        f"Corpus `{s['corpus']}` (manifest sha256 {s['manifest_sha256'][:12]}). Intervals: 95% "
        "bootstrap over documents. Multiple choice: gold vs 3 same-type wrong answers by mean-token NLL, "
        "chance 0.25.",
        "",
        "| condition | answer NLL | gap closed [95% CI] | multiple choice [95% CI] "
        "| exact match (knowledge) |",
        "|---|---|---|---|---|",
    ]
    gc, mc, em = o.get("gap_closed", {}), o.get("multiple_choice", {}), o.get("exact_match", {})
    names = {"base": "base, no document", "bias": "bias LoRA only", "own": "own generated adapter",
             "wrong": "wrong-document adapter", "in_context": "document in context"}  # fmt: skip
    for c in CONDITIONS:
        gap = "0" if c == "base" else "1" if c == "in_context" else _ci(gc.get(c))
        lines.append(f"| {names[c]} | {o['nll'].get(c, float('nan')):.3f} | {gap} | {_ci(mc.get(c))} "
                     f"| {_m(em.get(c))} |")  # fmt: skip
    lines += [
        "",
        f"Own minus wrong-document gap closed: {_ci(o.get('own_minus_wrong'))}; own minus bias only: "
        f"{_ci(o.get('own_minus_bias'))}. `hypernet`: {s['hypernet_seconds_per_doc']:.3f} s per document.",
    ]
    if "gate_pass_rate" in o:
        g = o["gate_pass_rate"]
        lines.append(f"QA gates on the own adapter: all passed {g['all']:.2f}"
                     + (f", knowledge + specificity {g['knowledge+specificity']:.2f}"
                        if "knowledge+specificity" in g else "") + f" ({g['docs']} documents).")  # fmt: skip
    lines += [
        "",
        "| probes | docs (probes) | gap closed own [CI] | wrong | bias only | own - wrong [CI] "
        "| MC base | MC own | MC wrong | MC bias | MC in context | EM own / in context |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [(f"by type: {t}", v) for t, v in s["by_type"].items()]
    rows += [(f"{k} chunk(s), all", v) for k, v in s["by_chunks"].items()]
    rows += [(f"{k} chunk(s), knowledge", v["knowledge"]) for k, v in s["by_chunks"].items()]
    for label, v in rows:
        lines.append(_row(label, v))
    gens = s.get("generators")
    if gens:
        counts = ", ".join(f"{k} chunk(s): {n}" for k, n in s["generator_docs"].items())
        ks = list(s["generator_docs"])
        lines += [
            "",
            f"### Generators side by side on the same held-out real documents ({counts})",
            "",
            "| generator | s per document | by chunks (s) | gap closed [CI] | by chunks | wrong-document "
            "| own - wrong [CI] | MC own (knowledge) | EM own | gates passed (all / knowledge+specificity) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for spec, g in gens.items():
            o = g["overall"]
            secs = " / ".join(f"{g['by_chunks'][k].get('seconds_per_doc', 0):.2f}" for k in ks)
            gaps = " / ".join(_m(g["by_chunks"][k].get("gap_closed", {}).get("own")) for k in ks)
            gate = o.get("gate_pass_rate")
            gates = (
                ""
                if not gate
                else f"{gate['all']:.2f} / {gate.get('knowledge+specificity', float('nan')):.2f}"
            )
            lines.append(
                f"| {spec} | {o.get('seconds_per_doc', 0):.2f} | {secs} "
                f"| {_ci(o.get('gap_closed', {}).get('own'))} | {gaps} "
                f"| {_m(o.get('gap_closed', {}).get('wrong'))} | {_ci(o.get('own_minus_wrong'))} "
                f"| {_m(o['knowledge'].get('multiple_choice', {}).get('own'))} "
                f"| {_m(o.get('exact_match', {}).get('own'))} | {gates} |"
            )
    lines.append("")
    return "\n".join(lines)


def _row(label: str, v: dict[str, Any]) -> str:
    gc, mc, em = v.get("gap_closed", {}), v.get("multiple_choice", {}), v.get("exact_match", {})
    ems = f"{_m(em.get('own'))} / {_m(em.get('in_context'))}" if em else ""
    return (
        f"| {label} | {v['docs']} ({v['probes']}) | {_ci(gc.get('own'))} | {_m(gc.get('wrong'))} "
        f"| {_m(gc.get('bias'))} | {_ci(v.get('own_minus_wrong'))} | {_m(mc.get('base'))} "
        f"| {_m(mc.get('own'))} | {_m(mc.get('wrong'))} | {_m(mc.get('bias'))} "
        f"| {_m(mc.get('in_context'))} | {ems} |"
    )
