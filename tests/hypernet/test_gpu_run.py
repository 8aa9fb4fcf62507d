"""The GPU run script at tiny scale on CPU: schedule sized to the budget, returnable checkpoint parts."""

from __future__ import annotations

import gzip
import json
import shutil

from hypernet.gpu_run import join_parts, split_file, train_there
from hypernet.model import load_hypernet
from tests.hypernet.test_train import REAL_TEXTS, write_corpus


def test_split_parts_rejoin_to_the_same_bytes(tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 1000)
    names = split_file(blob, tmp_path / "parts", part_bytes=10_000)
    assert len(names) == 26
    out = join_parts([tmp_path / "parts" / n for n in names], tmp_path / "joined.bin")
    assert out.read_bytes() == blob.read_bytes()


def test_tiny_run_fits_its_budget_and_returns_a_loadable_checkpoint(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus", REAL_TEXTS * 3, heldout=2)
    stage = tmp_path / "stage"
    (stage / "corpus").mkdir(parents=True)
    for name in ("documents.jsonl", "manifest.json"):
        with (corpus / name).open("rb") as src, gzip.open(stage / "corpus" / f"{name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    monkeypatch.setenv("INSTILL_GPU_WORK", str(tmp_path / "work"))
    out = tmp_path / "out"
    ckpt = train_there(stage, out, minutes=0.5, tiny=True)
    returned = [p for p in out.rglob("*") if p.is_file()]
    assert len(returned) <= 8 and all(p.stat().st_size <= 16 << 20 for p in returned)
    assert all(len(p.relative_to(out).parts) <= 3 for p in returned)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    schedule = next(r for r in log if r["kind"] == "schedule")
    assert schedule["steps"] >= 10 and log[-1]["kind"] == "final"
    parts = sorted(ckpt.glob("hypernet.safetensors.part-*"))
    rebuilt = tmp_path / "rebuilt"
    join_parts(parts, rebuilt / "hypernet.safetensors")
    shutil.copy(ckpt / "hypernet.json", rebuilt / "hypernet.json")
    net = load_hypernet(rebuilt)
    trained = json.loads((rebuilt / "hypernet.json").read_text())["training"]
    assert 0 < trained["steps"] <= schedule["steps"] and "real" in trained["heldout_eval_by_set"]
    assert net.gen_scale.abs().sum() > 0  # the generated path was trained
