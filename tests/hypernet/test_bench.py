"""`instill bench` on the tiny Llama: the JSON shape and positive figures (no timed assertions)."""

from __future__ import annotations

import json
import mmap
import time
from pathlib import Path

import pytest

from hypernet.bench import BenchConfig, PeakMemory, long_document, rss_mb, run_bench, to_markdown
from tests.fixtures.hypernet import train_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tiny_base, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_checkpoint(tiny_base, tmp_path_factory.mktemp("hypernet-run"))


def test_bench_times_every_generator_on_the_same_documents(tiny_base, checkpoint: Path) -> None:
    cfg = BenchConfig(
        docs=2,
        checkpoint=str(checkpoint),
        generator_options={"cd": {"steps": 2}, "hypernet+cd": {"steps": 2}},
        long_tokens=64,
        repeats=1,
    )
    records: list[dict] = []
    result = run_bench(tiny_base, cfg, records.append)
    assert set(result["seconds_per_doc"]) == {"hypernet", "cd", "hypernet+cd"}
    assert all(v > 0 for v in result["seconds_per_doc"].values())
    assert result["speedup_vs_hypernet"]["hypernet"] == 1.0
    assert all(v > 0 for v in result["speedup_vs_hypernet"].values())
    long = result["long_document"]
    assert long["tokens"] == 64 and long["chunks"] == 2  # 32-token chunks
    assert min(long["seconds"], long["feature_pass_seconds"], long["hypernet_pass_seconds"]) > 0
    assert long["rest_seconds"] >= 0  # the memory's solve (on by default)
    assert all(v >= result["rss_before_mb"] * 0.5 > 0 for v in result["peak_rss_mb"].values())
    assert [r["doc"] for r in records if r["kind"] == "bench-doc"] == [0, 1]
    assert json.loads(json.dumps(result)) == result
    table = to_markdown(result)
    assert "| cd |" in table and "A 64-token document (2 chunks)" in table and "memory's solve" in table


def test_peak_memory_sees_an_allocation_inside_the_block() -> None:
    peak = PeakMemory()
    before = rss_mb()
    with peak.watch():
        # fresh anonymous pages (a bytearray may reuse heap the long test session already freed, which
        # does not raise the resident size), every page touched
        block = mmap.mmap(-1, 64 * 2**20)
        for offset in range(0, len(block), 4096):
            block[offset] = 1
        time.sleep(0.1)  # the watcher samples every 5 ms from another thread: give it the GIL a few times
        block.close()
    assert peak.peak_mb >= before + 32


def test_long_document_has_the_exact_token_count(tiny_base) -> None:
    text = long_document(tiny_base, 100)
    assert len(tiny_base.tokenizer(text, add_special_tokens=False)["input_ids"]) == 100


def test_bench_config_needs_the_hypernet_reference() -> None:
    with pytest.raises(ValueError, match="must include 'hypernet'"):
        BenchConfig(generators=("cd",))


def test_bench_command_writes_json_and_markdown(
    tiny_model_dir: Path, checkpoint: Path, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    args = ["bench", "--json", str(tmp_path / "b.json"), "--md", str(tmp_path / "b.md"), "--base"]
    args += [str(tiny_model_dir), "--checkpoint", str(checkpoint), "--set", "docs=1"]
    args += ["--set", 'generators=["hypernet","cd"]', "--set", 'generator_options={"cd":{"steps":1}}']
    args += ["--set", "long_tokens=40", "--set", "repeats=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert set(data["seconds_per_doc"]) == {"hypernet", "cd"} and data["long_document"]["tokens"] == 40
    assert "A 40-token document" in (tmp_path / "b.md").read_text()
