"""How the memory's defaults were chosen (docs/eval-memory.md): variants of the `hypernet` generator on
one-chunk documents of the corpus's TRAINING split (every 40th document, the held-out packages never
read), measured with `instill eval`'s own functions. One JSON line per variant. ``chunks`` picks longer
documents (e.g. 2 or 4 chunks of 256 tokens); ``gate: true`` runs the QA gates on every own adapter.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python docs/eval-memory-tune.py \
        '{"n": 12, "variants": [["hypernet", {"memory": {"scale": 0.08}}], ["hypernet", {"memory": false}]]}'
"""

import json
import sys
import time

import torch

from hypernet.base_model import DEFAULT_BASE_MODEL, load_base_model
from hypernet.corpus import load_package_corpus
from hypernet.eval_real import (
    breakdown,
    choice_sets,
    measure,
    next_same_length,
    select_documents,
    token_counter,
)
from hypernet.generators import make_generator
from tasks.qa import evaluation_gate


def main(cfg: dict) -> None:
    torch.set_num_threads(1)
    base = load_base_model(DEFAULT_BASE_MODEL, cfg.get("model_cache", ".instill/models"))
    docs, _ = load_package_corpus(cfg.get("corpus", ".instill/corpus"), "train")
    docs = docs[:: cfg.get("stride", 40)]
    k = cfg.get("chunks", 1)
    chosen = select_documents(docs, token_counter(base), 256, [k], cfg.get("n", 12), seed=0)[k]
    gate = evaluation_gate() if cfg.get("gate") else None
    print(json.dumps({"docs": [d.doc.doc_id for d in chosen]}), flush=True)
    choices = choice_sets(chosen, 0)
    reference: list[dict] | None = None  # base and in-context, measured with the first variant
    for name, options in cfg["variants"]:
        gen = make_generator(name, base, options)
        start = time.time()
        own = {d.doc.doc_id: gen.generate(d.doc.text).weights for d in chosen}
        seconds = (time.time() - start) / len(chosen)
        records = []
        for i, d in enumerate(chosen):
            other = next_same_length(chosen, i).doc
            conditions = {"own": own[d.doc.doc_id], "wrong": own[other.doc_id]}
            if reference is None:
                conditions = {"base": None, "in_context": None} | conditions
            record = measure(base, d, choices[d.doc.doc_id], conditions, None, gate, other.text)
            shared = reference[i]["probes"] if reference else []
            for probe, ref in zip(record["probes"], shared, strict=False):
                for metric in ("nll", "mc"):
                    probe[metric] |= {c: ref[metric][c] for c in ("base", "in_context") if c in ref[metric]}
            records.append(record)
        reference = reference or records
        overall, knowledge = (breakdown(records, [1], 0)[k] for k in ("overall", "by_type"))
        knowledge = knowledge["knowledge"]
        mean = lambda v: round(v["mean"], 3)  # noqa: E731
        print(json.dumps({
            "gen": name, "opts": options, "s": round(seconds, 2),
            "own": mean(overall["gap_closed"]["own"]), "wrong": mean(overall["gap_closed"]["wrong"]),
            "own-wrong": mean(overall["own_minus_wrong"]), "k_own-wrong": mean(knowledge["own_minus_wrong"]),
            "mc_own_k": mean(knowledge["multiple_choice"]["own"]),
            "mc_base_k": mean(knowledge["multiple_choice"]["base"]),
            "mc_own": mean(overall["multiple_choice"]["own"]),
            "mc_base": mean(overall["multiple_choice"]["base"]),
            "gates": [r["gate"]["passed"] for r in records if "gate" in r],
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
