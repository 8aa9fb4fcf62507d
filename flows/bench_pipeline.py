"""`instill bench-pipeline`: what a refresh with nothing to do costs, and `instill status`.

Times, each as a fresh process (wall clock, start-up included): a no-op `instill refresh` of the given
knowledge base (its home must hold a finished refresh; the first run here makes one) and `instill
status`. Then the no-op cost per 1,000 unchanged local documents after start-up, in-process, for
catalogs of 100, 1,000 and 10,000 documents (the documents, versions and production adapters are
written straight into a scratch catalog; no model is loaded). ``--compare-with`` times another
installation's `instill` (e.g. the previous release) on its own home, printed side by side.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from flows.console import ConfigOption, console, out

TARGETS = {"noop_refresh_s": 5.0, "status_s": 2.0, "noop_per_1000_docs_s": 2.0}


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, proc.returncode, proc.stdout + proc.stderr


def _cli(executable: str | None) -> list[str]:
    return [executable] if executable else [sys.executable, "-c", "from flows.cli import app; app()"]


def _process_figures(config: Path, executable: str | None, home: str | None, repeats: int) -> dict:
    env = dict(os.environ)
    if home:
        env["INSTILL_HOME"] = home
    cli = _cli(executable)
    seconds, code, output = _timed([*cli, "refresh", "--config", str(config)], env)
    if " 0 changed" not in f" {output}":
        console.print(f"first refresh made the home ready ({seconds:.1f} s, exit {code})")
    noop, status = [], []
    for _ in range(repeats):
        seconds, code, output = _timed([*cli, "refresh", "--config", str(config)], env)
        if code != 0 or "0 changed" not in output:
            raise typer.BadParameter(f"not a no-op refresh (exit {code}): {output[-500:]}")
        noop.append(seconds)
        seconds, code, output = _timed([*cli, "status", "--config", str(config)], env)
        status.append(seconds)
    return {"noop_refresh_s": statistics.median(noop), "status_s": statistics.median(status)}


def _seed_catalog(folder: Path, n: int) -> Path:
    """A knowledge base of ``n`` unchanged documents, each with a registered production adapter."""
    import yaml

    from tasks.catalog.db import session_scope
    from tasks.catalog.models import Adapter, Document, DocumentVersion, Generator, Source
    from tasks.catalog.types import AdapterState
    from tasks.runtime import runtime

    docs = folder / "docs"
    docs.mkdir(parents=True)
    config = folder / "instill.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "benchkb",
                "sources": [{"kind": "local", "name": "docs", "path": "docs"}],
                "generator": {"name": "cd", "base_model": "bench-model-never-loaded"},
                "gates": {"enabled": False},
            }
        )
    )
    os.environ["INSTILL_HOME"] = str(folder / "home")
    rt = runtime(config)
    fingerprint = "f" * 64
    rt.remember_fingerprint(fingerprint)
    with session_scope(rt.sessions) as session:
        source = Source(name="docs", kind="local", uri=docs.as_uri(), config={})
        gen = Generator(
            name="cd:bench",
            kind="cd",
            fingerprint=fingerprint,
            base_model_id="bench",
            base_model_sha256="0" * 64,
        )
        session.add_all([source, gen])
        session.flush()
        for i in range(n):
            data = f"Document {i}: the bench document number {i} says nothing else.\n".encode()
            (docs / f"doc-{i:05d}.txt").write_bytes(data)
            sha = hashlib.sha256(data).hexdigest()
            doc = Document(
                source_id=source.id, external_key=f"doc-{i:05d}.txt", current_path=f"doc-{i:05d}.txt"
            )
            version = DocumentVersion(
                seq=1,
                source_revision=sha,
                raw_sha256=sha,
                text_sha256=sha,
                change_kind="added",
                path=doc.current_path,
                parser="text",
                parser_version="1",
            )
            version.adapters.append(
                Adapter(
                    generator_id=gen.id,
                    adapter_sha256=sha,
                    store_uri="adapters/x",
                    rank=8,
                    targets=["down_proj"],
                    registered_model=f"benchkb-docs-{i}",
                    model_version="1",
                    state=AdapterState.PRODUCTION,
                    covered_fraction=1.0,
                )
            )
            doc.versions.append(version)
            session.add(doc)
    return config


def _noop_in_process(config: Path) -> float:
    from flows.refresh import PLAIN_STEPS, nothing_to_do, run_refresh
    from tasks.detect import detect
    from tasks.finish import close_crashed_runs

    cfg = str(config)
    start = time.perf_counter()
    close_crashed_runs(cfg)
    plans = [detect(cfg, "docs")]
    assert nothing_to_do(cfg, plans), "the seeded catalog is not up to date"
    result = run_refresh(cfg, None, PLAIN_STEPS, plans)
    assert sum(result["changed"].values()) == 0 and not result["failed"], result["failed"][:3]
    return time.perf_counter() - start


def _scaling(sizes: list[int]) -> list[dict]:
    from tasks.runtime import forget_runtimes

    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="instill-bench-") as tmp:
            forget_runtimes()
            config = _seed_catalog(Path(tmp), n)
            _noop_in_process(config)  # the first no-op writes the release once
            seconds = min(_noop_in_process(config) for _ in range(2))
            forget_runtimes()
        rows.append(
            {"documents": n, "noop_s": round(seconds, 3), "per_1000_docs_s": round(1000 * seconds / n, 3)}
        )
        console.print(f"{n} documents: no-op {seconds:.2f} s after start-up")
    return rows


def bench_pipeline(
    config: ConfigOption = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the figures here.")] = None,
    sizes: Annotated[str, typer.Option(help="Catalog sizes for the per-document cost.")] = "100,1000,10000",
    repeats: Annotated[int, typer.Option(help="Timed runs per figure (median).")] = 3,
    compare_with: Annotated[
        str | None, typer.Option(help="Another installation's `instill` executable, timed side by side.")
    ] = None,
    compare_home: Annotated[str | None, typer.Option(help="INSTILL_HOME for --compare-with.")] = None,
) -> None:
    """Time a no-op refresh, `instill status`, and the no-op cost per 1,000 unchanged documents."""
    from flows.console import settings_for

    settings = settings_for(config)
    figures = {"this": _process_figures(settings.config, None, None, repeats)}
    if compare_with:
        figures["compared"] = _process_figures(settings.config, compare_with, compare_home, repeats)
    figures["scaling"] = _scaling([int(s) for s in sizes.split(",") if s.strip()])
    figures["this"]["noop_per_1000_docs_s"] = max(r["per_1000_docs_s"] for r in figures["scaling"])
    lines = [
        "| figure | target | this build |" + (" compared |" if compare_with else ""),
        "|---|---|---|" + ("---|" if compare_with else ""),
    ]
    for key, target in TARGETS.items():
        row = f"| {key} | <= {target} | {figures['this'][key]:.2f} |"
        if compare_with:
            value = figures["compared"].get(key)
            row += f" {value:.2f} |" if value is not None else " - |"
        lines.append(row)
    lines += ["", "| documents | no-op after start-up (s) | per 1,000 documents (s) |", "|---|---|---|"]
    lines += [f"| {r['documents']} | {r['noop_s']} | {r['per_1000_docs_s']} |" for r in figures["scaling"]]
    out.print("\n".join(lines), markup=False, highlight=False)
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
