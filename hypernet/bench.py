"""`instill bench`: what a generator costs per document, measured side by side in one process.

These machines are shared and noisy, so absolute seconds drift; the figure that carries is the ratio
of generators timed on the same documents in the same run, each document timed with every generator
in turn. Also: the one-pass generation time of a 512-token document (base-model feature pass and
hypernetwork pass separately; the median of a few repeats) and the peak resident memory while each
generator runs (sampled from /proc by a thread; CUDA's own peak when on a GPU).
"""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from hypernet.base_model import BaseModel
from hypernet.corpus import load_corpus
from hypernet.data import DataConfig, make_split
from hypernet.generators import D2L_GENERATORS, HypernetGenerator, make_generator

Log = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class BenchConfig:
    docs: int = 4  # synthetic held-out documents timed with every generator
    generators: tuple[str, ...] = ("hypernet", "cd", "hypernet+cd")
    generator_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoint: str | None = None
    long_tokens: int = 512
    repeats: int = 3
    data_seed: int = 0

    def __post_init__(self) -> None:
        if self.docs < 1 or self.repeats < 1 or self.long_tokens < 16:
            raise ValueError(f"BenchConfig: need docs >= 1, repeats >= 1, long_tokens >= 16: {self}")
        if "hypernet" not in self.generators:
            raise ValueError("BenchConfig: the generators must include 'hypernet' (the reference)")


class PeakMemory:
    """Peak resident set size (MiB) of this process while the block runs, sampled every 5 ms."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            self._stop.wait(0.005)

    @contextmanager
    def watch(self) -> Iterator[PeakMemory]:
        self._stop.clear()
        self.peak_mb = max(self.peak_mb, rss_mb())
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self.peak_mb = max(self.peak_mb, rss_mb())


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; elsewhere the lifetime peak from getrusage)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def long_document(base: BaseModel, tokens: int) -> str:
    """Real text (the corpus) cut to exactly ``tokens`` tokens of the base model's tokenizer."""
    text = " ".join(d.text for d in load_corpus("heldout"))
    ids = base.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < tokens:
        raise ValueError(f"the corpus has only {len(ids)} tokens, fewer than the {tokens} asked for")
    return base.tokenizer.decode(ids[:tokens])


def time_long_document(gen: HypernetGenerator, text: str, repeats: int) -> dict[str, Any]:
    """Median seconds of the feature pass, the hypernetwork pass and the whole ``generate``."""
    chunks = gen.encoder.chunk_ids(text)
    features_s, net_s, total_s = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        features = [gen.encoder.encode_ids(ids) for ids in chunks]
        middle = time.perf_counter()
        gen.net.generate(features)
        features_s.append(middle - start)
        net_s.append(time.perf_counter() - middle)
        total_s.append(gen.generate(text).seconds)
    return {
        "tokens": len(gen.base.tokenizer(text, add_special_tokens=False)["input_ids"]),
        "chunks": len(chunks),
        "seconds": round(statistics.median(total_s), 4),
        "feature_pass_seconds": round(statistics.median(features_s), 4),
        "hypernet_pass_seconds": round(statistics.median(net_s), 4),
        # generate() reads the document once for both; what is left is mostly the memory's solve
        "rest_seconds": round(
            max(statistics.median(total_s) - statistics.median(features_s) - statistics.median(net_s), 0.0), 4
        ),  # fmt: skip
        "repeats": repeats,
    }


def run_bench(base: BaseModel, cfg: BenchConfig, log: Log = lambda record: None) -> dict[str, Any]:
    """Per-document seconds of every generator on the same documents, their ratios, the 512-token
    figure and peak memory."""
    options = {name: dict(cfg.generator_options.get(name, {})) for name in cfg.generators}
    for name in cfg.generators:
        if name in D2L_GENERATORS and cfg.checkpoint:
            options[name].setdefault("checkpoint", cfg.checkpoint)
    gens = {name: make_generator(name, base, options[name]) for name in cfg.generators}
    hyper = gens["hypernet"]
    if not isinstance(hyper, HypernetGenerator):
        raise TypeError(f"generator 'hypernet' is registered as {type(hyper).__name__}")
    docs = make_split(DataConfig(seed=cfg.data_seed, n_heldout=cfg.docs), "heldout")
    hyper.generate(docs[0].text)  # warm-up: first-call allocations are not the steady state
    rss_start = rss_mb()
    seconds: dict[str, list[float]] = {name: [] for name in gens}
    peaks = {name: PeakMemory() for name in gens}
    for i, doc in enumerate(docs):
        for name, gen in gens.items():
            with peaks[name].watch():
                seconds[name].append(gen.generate(doc.text).seconds)
        log({"kind": "bench-doc", "doc": i, **{n: round(s[-1], 4) for n, s in seconds.items()}})
    per_doc = {name: sum(s) / len(s) for name, s in seconds.items()}
    long = time_long_document(hyper, long_document(base, cfg.long_tokens), cfg.repeats)
    log({"kind": "bench-long", **long})
    result: dict[str, Any] = {
        "seconds_per_doc": {name: round(v, 4) for name, v in per_doc.items()},
        "speedup_vs_hypernet": {n: round(v / per_doc["hypernet"], 2) for n, v in per_doc.items()},
        "long_document": long,
        "peak_rss_mb": {name: round(p.peak_mb, 1) for name, p in peaks.items()},
        "rss_before_mb": round(rss_start, 1),
        "docs": len(docs),
        "doc_tokens_mean": round(_mean_tokens(base, [d.text for d in docs]), 1),
    }
    if torch.cuda.is_available() and str(base.device).startswith("cuda"):
        result["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    result["meta"] = {
        "base_model_id": base.model_id,
        "checkpoint_sha256": hyper.checkpoint_sha256,
        "device": str(base.device),
        "threads": torch.get_num_threads(),
        "config": asdict(cfg) | {"generators": list(cfg.generators)},
        "fingerprints": {name: gen.fingerprint() for name, gen in gens.items()},
    }
    return result


def _mean_tokens(base: BaseModel, texts: list[str]) -> float:
    return sum(len(base.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) / len(texts)


def to_markdown(result: dict[str, Any]) -> str:
    long = result["long_document"]
    lines = [
        f"### Generation cost ({result['docs']} synthetic documents of ~{result['doc_tokens_mean']:.0f} "
        f"tokens, timed side by side; {result['meta']['threads']} thread(s), {result['meta']['device']})",
        "",
        "| generator | seconds per document | x hypernet | peak RSS (MiB) |",
        "|---|---|---|---|",
    ]
    for name, s in result["seconds_per_doc"].items():
        ratio, peak = result["speedup_vs_hypernet"][name], result["peak_rss_mb"][name]
        lines.append(f"| {name} | {s:.3f} | {ratio:.1f} | {peak:.0f} |")
    lines += [
        "",
        f"A {long['tokens']}-token document ({long['chunks']} chunks): {long['seconds']:.3f} s with "
        "`hypernet` "
        f"(base-model feature pass {long['feature_pass_seconds']:.3f} s, hypernetwork "
        f"{long['hypernet_pass_seconds']:.3f} s, the rest (the memory's solve, when on) "
        f"{long.get('rest_seconds', 0.0):.3f} s; median of {long['repeats']}).",
        "",
    ]
    return "\n".join(lines)
