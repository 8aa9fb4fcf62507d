"""`instill eval-kb`: routing and answering strategies over many documents, measured (docs/eval-kb.md).

The question set (``tasks/data/kb_questions.json``) holds 20 fictional documents (the base model cannot
know them) and 68 questions, 8 of which need two documents; each question has a gold answer and three
wrong answers of the same kind. Distractor documents (real text: the corpus under ``<home>/corpus`` when
present, else the shipped python-docs corpus) grow the knowledge base 20 -> 200 -> 1,000 documents.

Per knowledge-base size and router (``bm25``, ``embedding``): precision@1, precision@2 and recall@2 of the
gold documents. Per strategy (base model alone, top1, cat, linear, rag, rag+cat, answered with the better
router): multiple-choice accuracy (the gold answer has the lowest mean NLL of the four), mean gold-answer
NLL, greedy exact match (smallest size only: generation is the slow part) and seconds per answer.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from tasks.answer import rag_context
from tasks.settings import Settings

STRATEGY_ORDER = ("base", "top1", "cat", "linear", "rag", "rag+cat")


@dataclass
class EvalKBConfig:
    sizes: list[int] = field(default_factory=lambda: [20, 200, 1000])
    generator: str = "hypernet"
    steps: int = 10
    base_model: str = "smollm2-135m-instruct"
    limit: int | None = None
    top_k: int = 2
    distractor_words: int = 150
    rag_max_words: int = 300
    max_new_tokens: int = 16
    distractors: Path | None = None
    # What the 2-core CPU budget (<= 20 min, one thread) allows: the embedding router up to this size, greedy
    # exact match for these strategies at the smallest size, and these strategies at the larger sizes.
    embed_max_size: int = 200
    em_strategies: tuple[str, ...] = ("top1", "rag")
    large_strategies: tuple[str, ...] = ("top1", "rag")
    # None: every strategy at the smallest size, ``large_strategies`` at the others; () measures routing only.
    strategies: tuple[str, ...] | None = None
    # Stop embedding distractors after this many minutes (the embedding cache keeps what was done; the
    # embedding router is then measured up to the size reached). None: no limit.
    embed_budget_minutes: float | None = None
    # Fold this run's figures into the report already in ``out_dir`` (each run listed under ``runs``)
    # instead of replacing it: a later run can add a size, a router or a generator without redoing the rest.
    merge: bool = False


def label(strategy: str, generator: str) -> str:
    """A strategy's name in the report: adapter strategies carry their generator unless it is hypernet."""
    uses_adapters = strategy in ADAPTER_STRATEGIES
    return f"{strategy}[{generator}]" if uses_adapters and generator != "hypernet" else strategy


ADAPTER_STRATEGIES = ("top1", "cat", "linear", "rag+cat")


def question_set() -> dict[str, Any]:
    return json.loads(files("tasks").joinpath("data/kb_questions.json").read_text(encoding="utf-8"))


def distractor_texts(n: int, settings: Settings, path: Path | None, words: int) -> tuple[list[str], str]:
    """``n`` real-text documents of ``words`` words, spread evenly over the source: a ``documents.jsonl``
    (the corpus `make corpus` builds; one document per line, cut) or a folder of ``*.txt`` files, each cut
    into consecutive ``words``-word pieces (python3.11-doc's ``/usr/share/doc/python3.11/html/_sources``)."""
    candidates = [path] if path else [settings.home / "corpus" / "documents.jsonl"]
    candidates.append(Path(str(files("hypernet").joinpath("corpora/python-docs.jsonl"))))
    source = Path(next(p for p in candidates if p and Path(p).exists()))
    if source.is_dir():
        pool = [
            " ".join(chunk)
            for f in sorted(source.rglob("*.txt"))
            for all_words in [f.read_text(encoding="utf-8", errors="replace").split()]
            for chunk in (all_words[i : i + words] for i in range(0, len(all_words), words))
        ]
    else:
        lines = source.read_text(encoding="utf-8").splitlines()
        pool = [" ".join(json.loads(line).get("text", "").split()[:words]) for line in lines]
    step = max(1, len(pool) // max(n, 1))
    texts = [t for t in pool[::step] if len(t.split()) >= 40][:n]
    if len(texts) < n:
        raise ValueError(
            f"{source} holds {len(texts)} usable distractor documents; {n} are needed "
            f"(build the corpus: `make corpus`, or pass --distractors)"
        )
    return texts, str(source)


@dataclass
class _Run:
    """What one eval-kb run shares: the config, the base model, the texts, the questions."""

    cfg: EvalKBConfig
    base: Any
    texts: list[str]
    questions: list[dict[str, Any]]
    gold: list[list[int]]
    log: Callable[[str], None]
    cache_dir: Path = Path(".")
    generator: Any = None
    adapters: dict[int, Any] = field(default_factory=dict)
    gen_seconds: list[float] = field(default_factory=list)

    def adapter(self, i: int):
        if i not in self.adapters:
            made = self.generator.generate(self.texts[i])
            self.adapters[i] = made.weights.detach()
            self.gen_seconds.append(made.seconds)
        return self.adapters[i]


def run_eval_kb(
    cfg: EvalKBConfig, settings: Settings, out_dir: Path, log: Callable[[str], None] = print
) -> dict[str, Any]:
    import torch

    from hypernet.base_model import load_base_model
    from hypernet.generators import make_generator

    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    started, load = time.perf_counter(), os.getloadavg()[0]
    data = question_set()
    core = data["documents"]
    questions = data["questions"][: cfg.limit] if cfg.limit else data["questions"]
    keys = [d["key"] for d in core]
    base = load_base_model(cfg.base_model, settings.models_dir, device=settings.device)
    biggest = max(cfg.sizes)
    extra, source = distractor_texts(biggest - len(core), settings, cfg.distractors, cfg.distractor_words)
    texts = [d["text"] for d in core] + extra
    log(f"{len(core)} documents, {len(questions)} questions, {len(extra)} distractors from {source}")
    gold = [[keys.index(k) for k in q["documents"]] for q in questions]
    run = _Run(cfg, base, texts, questions, gold, log, cache_dir=settings.home / "eval-kb")
    plans = _strategy_plan(cfg)
    routing, rankings, emb_seconds = _route(run)
    smallest = min(cfg.sizes)
    router = max(routing, key=lambda k: (routing[k][str(smallest)]["p@1"], k == "bm25"))
    needed = _needed_adapters(plans, rankings, router)
    if needed:  # generated before answering, so that seconds per answer leave generation out
        options = {"steps": cfg.steps} if "cd" in cfg.generator else {}
        run.generator = make_generator(cfg.generator, base, options)
        for i in needed:
            run.adapter(i)
        each = statistics.mean(run.gen_seconds)
        log(f"generated {len(needed)} {cfg.generator} adapters ({each:.2f} s each)")
    answers = _answer(run, plans, rankings, router, out_dir, routing)
    minutes = (time.perf_counter() - started) / 60
    result = {
        "config": {**asdict(cfg), "distractors": source, "threads": settings.threads, "out": str(out_dir)},
        "questions": len(questions),
        "two_document_questions": sum(len(q["documents"]) == 2 for q in questions),
        "generator_seconds_per_document": statistics.mean(run.gen_seconds) if run.gen_seconds else None,
        "generator_checkpoint_sha256": run.generator.describe().get("checkpoint_sha256")
        if run.generator
        else None,
        "embedding_seconds": emb_seconds,
        "routing": routing,
        "answer_router": router,
        "answers": answers,
        "minutes": minutes,
    }
    result["runs"] = [_run_record(result, load)]
    if cfg.merge and (out_dir / "eval-kb.json").exists():
        result = _merge(json.loads((out_dir / "eval-kb.json").read_text()), result)
    else:
        _tag(result, 1)
    result["best_strategy"] = _best(result["answers"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval-kb.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "eval-kb.partial.json").unlink(missing_ok=True)
    _plot(result, out_dir / "eval-kb.png")
    write_markdown(out_dir)
    log(f"done in {minutes:.1f} min; best strategy {result['best_strategy']}")
    return result


def _needed_adapters(plans: dict[int, tuple[str, ...]], rankings: dict, router: str) -> list[int]:
    """The documents whose adapter some planned strategy uses (top1: the first routed; others: top-k)."""
    needed: set[int] = set()
    for size, strategies in plans.items():
        for strategy in set(strategies) & set(ADAPTER_STRATEGIES):
            for top in rankings[(router, size)]:
                needed.update(top[:1] if strategy == "top1" else top)
    return sorted(needed)


def _strategy_plan(cfg: EvalKBConfig) -> dict[int, tuple[str, ...]]:
    """The strategies measured at each size."""
    smallest = min(cfg.sizes)
    if cfg.strategies is not None:
        return {size: tuple(cfg.strategies) for size in cfg.sizes}
    return {size: STRATEGY_ORDER if size == smallest else cfg.large_strategies for size in cfg.sizes}


def _route(run: _Run) -> tuple[dict, dict, float | None]:
    """Precision of both routers at every size; the rankings the answers use."""
    from tasks.route import BM25Router, EmbeddingRouter

    cfg, texts, questions = run.cfg, run.texts, run.questions
    matrix = qvec = emb_seconds = None
    sizes = list(cfg.sizes)
    if cfg.embed_max_size > 0:  # embeddings once for the largest corpus (a prefix is each smaller one)
        matrix, emb_seconds = _embed_documents(run, min(cfg.embed_max_size, len(texts)))
        qvec = EmbeddingRouter([], run.base).embed([q["question"] for q in questions])
        reached = len(matrix) // 100 * 100
        if len(matrix) < min(cfg.embed_max_size, len(texts)) and reached > max(
            [s for s in sizes if s <= len(matrix)], default=0
        ):
            sizes = sorted({*sizes, reached})  # the budget ran out: the largest size it reached, for both
    routing: dict[str, dict[str, dict[str, float]]] = {}
    rankings: dict[tuple[str, int], list[list[int]]] = {}
    for size in sizes:
        bm25 = BM25Router(texts[:size])
        for kind in ("bm25", "embedding"):
            if kind == "embedding" and (matrix is None or size > len(matrix)):
                continue
            ranked = []
            for qi, q in enumerate(questions):
                scores = bm25.scores(q["question"]) if kind == "bm25" else matrix[:size] @ qvec[qi]
                ranked.append([int(i) for i in np.argsort(-scores, kind="stable")[: cfg.top_k]])
            rankings[(kind, size)] = ranked
            routing.setdefault(kind, {})[str(size)] = _routing_metrics(ranked, run.gold)
        run.log(
            f"routing at {size}: "
            + ", ".join(f"{k} P@1 {v[str(size)]['p@1']:.3f}" for k, v in routing.items() if str(size) in v)
        )
    return routing, rankings, emb_seconds


EMBED_CHUNK = 40  # documents between saves of the embedding cache


def _embed_documents(run: _Run, count: int) -> tuple[np.ndarray, float]:
    """The first ``count`` texts embedded, in chunks saved to ``<home>/eval-kb/emb-<sha>.npy`` (keyed by the
    base model's weights and the texts): a run that stops, or whose ``embed_budget_minutes`` runs out,
    leaves what it embedded for the next. Returns the rows embedded and the seconds spent embedding now."""
    import hashlib

    from tasks.route import EMBED_TOKENS, EmbeddingRouter

    key = hashlib.sha256(f"{run.base.weights_sha256}:{EMBED_TOKENS}".encode())
    for text in run.texts[:count]:
        key.update(hashlib.sha256(text.encode()).digest())
    cache = run.cache_dir / f"emb-{key.hexdigest()[:16]}.npy"
    rows = [np.load(cache)] if cache.exists() else []
    done = sum(len(r) for r in rows)
    router, t0 = EmbeddingRouter([], run.base), time.perf_counter()
    budget = run.cfg.embed_budget_minutes
    while done < count and (budget is None or time.perf_counter() - t0 < budget * 60):
        rows.append(router.embed(run.texts[done : min(count, done + EMBED_CHUNK)]))
        done += len(rows[-1])
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, np.concatenate(rows))
        run.log(f"embedded {done}/{count} documents ({time.perf_counter() - t0:.0f} s this run)")
    return (np.concatenate(rows) if rows else np.zeros((0, 1))), time.perf_counter() - t0


def _answer(run: _Run, plans: dict, rankings: dict, router: str, out_dir: Path, routing: dict) -> dict:
    """Multiple choice, NLL, exact match and latency of every planned strategy at every size."""
    from hypernet.metrics import answer_nll, exact_match, greedy_answer
    from hypernet.probes import Probe
    from tasks.combine import combine

    cfg, questions, smallest = run.cfg, run.questions, min(run.cfg.sizes)

    def plan(strategy: str, top: list[int]):
        weights = context = None
        if strategy in ADAPTER_STRATEGIES:
            chosen = top[:1] if strategy == "top1" else top
            parts = [run.adapter(i) for i in chosen]
            how = "linear" if strategy == "linear" else "cat"
            weights = parts[0] if len(parts) == 1 else combine(parts, how=how)
        if strategy in ("rag", "rag+cat"):
            context = rag_context([run.texts[i] for i in top], cfg.rag_max_words)
        return weights, context

    answers: dict[str, dict[str, dict[str, float]]] = {}
    for size in cfg.sizes:
        ranked = rankings[(router, size)]
        for strategy in plans[size]:
            correct, nll, em, seconds = [], [], [], []
            for qi, q in enumerate(questions):
                t = time.perf_counter()
                weights, context = plan(strategy, ranked[qi]) if strategy != "base" else (None, None)
                options_ = [q["answer"], *q["wrong"]]
                scores = answer_nll(run.base, [Probe(q["question"], o) for o in options_], weights, context)
                correct.append(float(int(np.argmin(scores)) == 0))
                nll.append(scores[0])
                if size == smallest and strategy in cfg.em_strategies:
                    pred = greedy_answer(run.base, q["question"], weights, cfg.max_new_tokens, context)
                    em.append(float(exact_match(pred, q["answer"])))
                seconds.append(time.perf_counter() - t)
            row = {
                "questions": len(questions),
                "mc_accuracy": statistics.mean(correct),
                "answer_nll": statistics.mean(nll),
                "seconds_per_answer": statistics.mean(seconds),
            }
            two = [c for c, q in zip(correct, questions, strict=True) if len(q["documents"]) == 2]
            row["mc_accuracy_two_doc"] = statistics.mean(two) if two else float("nan")
            if em:
                row["exact_match"] = statistics.mean(em)
            answers.setdefault(str(size), {})[label(strategy, cfg.generator)] = row
            _partial(out_dir, routing, answers)
            run.log(
                f"{size} docs, {label(strategy, cfg.generator)}: MC {row['mc_accuracy']:.3f}, "
                f"NLL {row['answer_nll']:.3f}, EM {row.get('exact_match', float('nan')):.3f}, "
                f"{row['seconds_per_answer']:.2f} s"
            )
    return answers


def _best(answers: dict[str, dict[str, dict[str, float]]]) -> str | None:
    """The best strategy at the smallest size: MC accuracy, then exact match, then gold NLL."""
    if not answers:
        return None
    at_small = answers[min(answers, key=int)]
    candidates = [s for s in at_small if s != "base"]
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda s: (
            at_small[s]["mc_accuracy"],
            at_small[s].get("exact_match", 0),
            -at_small[s]["answer_nll"],
        ),
    )


def _run_record(result: dict[str, Any], load: float) -> dict[str, Any]:
    """What one run measured, with what, on what machine."""
    c = result["config"]
    measured = [f"routing {k} at {', '.join(sizes)}" for k, sizes in result["routing"].items()]
    measured += [f"answers at {size}: {', '.join(by)}" for size, by in result["answers"].items()]
    return {
        "command": command_line(c),
        "generator": c["generator"],
        "steps": c["steps"] if "cd" in c["generator"] else None,
        "questions": result["questions"],
        "distractors": c["distractors"],
        "threads": c["threads"],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f} at the start",
        "minutes": round(result["minutes"], 1),
        "embedding_seconds": result["embedding_seconds"],
        "generator_seconds_per_document": result["generator_seconds_per_document"],
        "generator_checkpoint_sha256": result.get("generator_checkpoint_sha256"),
        "measured": measured,
    }


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with ``new``'s figures laid over it (same router, size and strategy: the new one wins)."""
    earlier = old.get("runs") or [_legacy_run(old)]
    _tag(old, 1)  # rows from before runs were numbered came from the first run
    _tag(new, len(earlier) + 1)
    merged = {**old, "config": new["config"], "questions": new["questions"]}
    merged["routing"] = {k: dict(v) for k, v in old.get("routing", {}).items()}
    for kind, by_size in new["routing"].items():
        merged["routing"].setdefault(kind, {}).update(by_size)
    merged["answers"] = {k: dict(v) for k, v in old.get("answers", {}).items()}
    for size, by in new["answers"].items():
        merged["answers"].setdefault(size, {}).update(by)
    if new["embedding_seconds"] is not None:
        merged["embedding_seconds"] = new["embedding_seconds"]
    merged["runs"] = earlier + new["runs"]
    merged["minutes"] = sum(r["minutes"] for r in merged["runs"])
    return merged


def _tag(result: dict[str, Any], run: int) -> None:
    """Number every routing and answer row that has no run number yet with ``run``."""
    rows = [m for by in result["routing"].values() for m in by.values()]
    rows += [m for by in result["answers"].values() for m in by.values()]
    for row in rows:
        row.setdefault("run", run)


def _legacy_run(old: dict[str, Any]) -> dict[str, Any]:
    """The run record of a report written before runs were recorded."""
    return _run_record(
        {**old, "generator_seconds_per_document": old.get("generator_seconds_per_document")}, 0.0
    ) | {"machine": "2-core VM, shared with a training job (load not recorded)"}


def _partial(out_dir: Path, routing: dict, answers: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval-kb.partial.json").write_text(
        json.dumps({"routing": routing, "answers": answers}, indent=1)
    )


def _routing_metrics(ranked: list[list[int]], gold: list[list[int]]) -> dict[str, float]:
    p1 = [float(r[0] in g) for r, g in zip(ranked, gold, strict=True)]
    p2 = [len(set(r[:2]) & set(g)) / 2 for r, g in zip(ranked, gold, strict=True)]
    r2 = [len(set(r[:2]) & set(g)) / len(g) for r, g in zip(ranked, gold, strict=True)]
    return {"p@1": statistics.mean(p1), "p@2": statistics.mean(p2), "recall@2": statistics.mean(r2)}


def _plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, by_size in result["routing"].items():
        sizes = sorted(by_size, key=int)
        a.plot([int(s) for s in sizes], [by_size[s]["p@1"] for s in sizes], marker="o", label=f"{kind} P@1")
        a.plot(
            [int(s) for s in sizes],
            [by_size[s]["recall@2"] for s in sizes],
            marker="x",
            ls="--",
            label=f"{kind} recall@2",
        )
    a.set(
        xscale="log",
        xlabel="documents in the knowledge base",
        ylabel="routing",
        ylim=(0, 1.05),
        title="Routing as distractors grow",
    )
    a.legend(fontsize=8)
    sizes = sorted(result["answers"], key=int)
    labels = list(dict.fromkeys(s for size in sizes for s in result["answers"][size]))
    for strategy in labels:
        pts = [
            (int(s), result["answers"][s][strategy]["mc_accuracy"])
            for s in sizes
            if strategy in result["answers"][s]
        ]
        if pts:
            b.plot(*zip(*pts, strict=True), marker="o", label=strategy)
    b.axhline(0.25, color="grey", ls=":", lw=1)
    b.set(
        xscale="log",
        xlabel="documents in the knowledge base",
        ylabel="multiple-choice accuracy",
        ylim=(0, 1.05),
        title=f"Answers ({result['answer_router']} routing)",
    )
    if labels:
        b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def command_line(c: dict[str, Any]) -> str:
    """The `instill eval-kb` command that reproduces a run's config (defaults left out)."""
    d = asdict(EvalKBConfig())
    parts = [f"OMP_NUM_THREADS=1 instill eval-kb --out {c.get('out', 'docs')}"]
    if c["sizes"] != d["sizes"]:
        parts.append("--sizes " + ",".join(str(x) for x in c["sizes"]))
    for key in ("generator", "steps", "limit", "embed_max_size", "embed_budget_minutes"):
        if c.get(key, d[key]) != d[key] and (key != "steps" or "cd" in c["generator"]):
            parts.append(f"--{key.replace('_', '-')} {c[key]}")
    if tuple(c.get("em_strategies", d["em_strategies"])) != tuple(d["em_strategies"]):
        parts.append(f"--em-strategies '{','.join(c['em_strategies']) or 'none'}'")
    if c.get("strategies") is not None:
        parts.append(f"--strategies '{','.join(c['strategies']) or 'none'}'")
    if "corpus/documents.jsonl" in str(c.get("distractors")):
        parts.append("--distractors .instill/corpus/documents.jsonl")
    elif c.get("distractors") and "python-docs.jsonl" not in str(c["distractors"]):
        parts.append(f"--distractors {c['distractors']}")
    if c.get("merge"):
        parts.append("--merge")
    return " ".join(parts)


INTRO = (
    "Question set: `tasks/data/kb_questions.json`: 20 fictional documents (a lighthouse, a ferry, a comet, "
    '...; 40-50 words each), 68 questions, 8 of them needing two documents ("Who captains the ferry that '
    'carries Velm tea?"), each with a gold answer and three wrong answers of the same kind. Distractors: '
    "real-text documentation cut to 150 words (each run's source is under Runs) added to the knowledge "
    "base: 20 -> 200 -> 1,000 documents. Base model SmolLM2-135M-Instruct; "
    "adapters from the shipped hypernetwork checkpoint unless a strategy names its generator "
    "(`top1[cd]`: per-document context distillation).\n"
)


def write_markdown(d: Path) -> Path:
    """docs/eval-kb.md from eval-kb.json (or, while a run is going, eval-kb.partial.json). A hand-written
    section from ``## Verdict`` on is kept as it is."""
    full = (d / "eval-kb.json").exists()
    r = json.loads((d / ("eval-kb.json" if full else "eval-kb.partial.json")).read_text())
    old = (d / "eval-kb.md").read_text() if (d / "eval-kb.md").exists() else ""
    L = ["# Many documents at once: routing and answering strategies (`instill eval-kb`)\n", INTRO]
    if not full:
        L.append(
            "**Status: partial.** A run is going or did not finish; the tables hold what it measured so far "
            "(`eval-kb.partial.json` is written after every strategy).\n"
        )
    L.append(
        "## Routing\n\nP@1: the top document is a gold one. P@2: gold documents among the top 2, / 2. "
        "recall@2: fraction of a question's gold documents in the top 2.\n"
    )
    L.append("| router | documents | P@1 | P@2 | recall@2 | run |\n|---|---|---|---|---|---|")
    for kind, by in r["routing"].items():
        for size, m in sorted(by.items(), key=lambda x: int(x[0])):
            L.append(
                f"| {kind} | {size} | {m['p@1']:.3f} | {m['p@2']:.3f} | {m['recall@2']:.3f} | "
                f"{m.get('run', 1)} |"
            )
    L.append("")
    L.append(
        f"## Answers (routed with {r.get('answer_router', 'bm25').upper()}, top-2)\n\nMC accuracy: the gold "
        "answer has the lowest mean NLL of the four (chance 0.25). NLL: mean per-token NLL of the gold "
        "answer. EM: greedy answer (16 tokens) contains the gold answer. Seconds: per answer, including "
        "combining adapters (and greedy generation where EM is measured).\n"
    )
    L.append(
        "| documents | strategy | questions | MC accuracy | MC, two-document questions | gold NLL | EM | "
        "s/answer | run |\n|---|---|---|---|---|---|---|---|---|"
    )
    for size, by in sorted(r["answers"].items(), key=lambda x: int(x[0])):
        for s, m in by.items():
            em = f"{m['exact_match']:.3f}" if "exact_match" in m else "-"
            L.append(
                f"| {size} | {s} | {m.get('questions', r['questions'])} | {m['mc_accuracy']:.3f} | "
                f"{m['mc_accuracy_two_doc']:.3f} | {m['answer_nll']:.3f} | {em} | "
                f"{m['seconds_per_answer']:.2f} | {m.get('run', 1)} |"
            )
    if full:
        L.append(
            f"\nBest strategy (MC accuracy at the smallest size, then EM, then NLL): "
            f"**{r.get('best_strategy')}**.\n"
        )
        L.append("![routing and accuracy](eval-kb.png)\n")
        L.append(_runs_markdown(r.get("runs") or [_legacy_run(r)]))
    if "\n## Verdict" in old:
        L.append(old[old.index("\n## Verdict") + 1 :].rstrip("\n"))
    (d / "eval-kb.md").write_text("\n".join(L) + "\n")
    return d / "eval-kb.md"


def _runs_markdown(runs: list[dict[str, Any]]) -> str:
    L = [
        "## Runs\n\nThe run column above names the run each figure comes from (a later run's figure "
        "replaces an earlier one for the same router, size and strategy).\n"
    ]
    for i, run in enumerate(runs, 1):
        L.append(
            f"{i}. `{run.get('command') or 'instill eval-kb'}`: {run['questions']} questions, "
            f"{run['threads']} torch thread(s), {run['machine']}; {run['minutes']:.1f} min. Measured: "
            + "; ".join(run["measured"])
            + "."
        )
    return "\n".join(L) + "\n"
