"""The ML engineer's commands: `instill train-hypernet`, `instill eval`, `instill bench`.

Plain functions; ``flows/cli.py`` registers them. ``--config`` picks the settings (state folder, model
cache) as for every other command. Heavy imports happen inside the commands so that `instill --help`
stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.console import ConfigOption, SetOption, console, fail, out, settings_for, write_report
from tasks.settings import DEFAULT_BASE_MODEL, Settings

BaseOption = Annotated[str, typer.Option("--base", help="Base model alias or local HF model dir.")]
CheckpointOption = Annotated[
    Path | None,
    typer.Option("--checkpoint", help="Hypernetwork checkpoint dir (default: the one shipped for the base)."),
]
ThreadsOption = Annotated[int, typer.Option("--threads", help="torch CPU threads (0: torch's default).")]
DeviceOption = Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: CUDA if present).")]


def _load_base(settings: Settings, spec: str, device: str | None, threads: int):
    from hypernet.base_model import BaseModelError
    from tasks.runtime import load_base

    try:
        return load_base(settings, spec, device=device, threads=threads)
    except BaseModelError as exc:
        fail(str(exc))


def _progress(record: dict[str, Any]) -> None:
    console.print(json.dumps(record), highlight=False)


def _generator_options(cd_steps: int | None, refine_steps: int | None) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    if cd_steps is not None:
        options["cd"] = {"steps": cd_steps}
    if refine_steps is not None:
        options["hypernet+cd"] = {"steps": refine_steps}
    return options


def train_hypernet(
    out_dir: Annotated[Path, typer.Option("--out", help="Run dir: checkpoint/, metrics.jsonl, final/.")],
    base: BaseOption = DEFAULT_BASE_MODEL,
    minutes: Annotated[float | None, typer.Option(help="Wall-clock bound on the training loop.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps (the schedule's length).")] = None,
    sets: SetOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = 1,
    config: ConfigOption = None,
) -> None:
    """Train (or resume) the Doc-to-LoRA hypernetwork; metrics go to MLflow. --set takes TrainConfig
    fields (data.n_train=800)."""
    settings_for(config)
    from flows.train import train_hypernet as train_flow
    from hypernet.train import TrainError, parse_overrides

    try:
        options = parse_overrides(sets or [])
        result = train_flow(
            str(out_dir), base, options, minutes=minutes, steps=steps, device=device, threads=threads
        )
    except (TrainError, ValueError, TypeError) as exc:
        fail(str(exc))
    gap = result["heldout_eval"]["gap_closed"]["mean"]
    wrong = result["heldout_eval"]["gap_closed_wrong_doc"]
    out.print(
        f"final checkpoint {result['final']} (sha256 {result['checkpoint_sha256'][:12]}), "
        f"{result['steps']} steps on {result['device']}: held-out gap closed {gap:.3f}, "
        f"wrong document {wrong:.3f}"
    )


def evaluate(
    json_path: Annotated[Path, typer.Option("--json", help="Write the results here (JSON).")],
    md_path: Annotated[
        Path | None, typer.Option("--md", help="Markdown table (default: beside --json).")
    ] = None,
    base: BaseOption = DEFAULT_BASE_MODEL,
    checkpoint: CheckpointOption = None,
    synthetic_docs: Annotated[int, typer.Option(help="Held-out synthetic documents.")] = 48,
    real_docs: Annotated[int, typer.Option(help="Held-out real-text documents.")] = 24,
    em_docs: Annotated[int, typer.Option(help="Synthetic documents also answered greedily.")] = 12,
    real_em_docs: Annotated[int, typer.Option(help="Real documents also answered greedily.")] = 6,
    generator_docs: Annotated[int, typer.Option(help="Synthetic documents every generator runs on.")] = 4,
    real_generator_docs: Annotated[int, typer.Option(help="Real documents every generator runs on.")] = 2,
    generators: Annotated[
        str, typer.Option(help="Comma-separated generators to compare.")
    ] = "hypernet,cd,hypernet+cd",
    cd_steps: Annotated[int | None, typer.Option(help="Steps of the `cd` generator.")] = None,
    refine_steps: Annotated[int | None, typer.Option(help="Refinement steps of `hypernet+cd`.")] = None,
    device: DeviceOption = None,
    threads: ThreadsOption = 1,
    config: ConfigOption = None,
) -> None:
    """Measure the generators on held-out documents: five conditions, gap closed with CIs, exact match."""
    settings = settings_for(config)
    from hypernet.eval import EvalConfig, run_eval, to_markdown
    from hypernet.generators import GeneratorError

    try:
        cfg = EvalConfig(
            synthetic_docs=synthetic_docs,
            real_docs=real_docs,
            em_docs=em_docs,
            real_em_docs=real_em_docs,
            generator_docs=generator_docs,
            real_generator_docs=real_generator_docs,
            generators=tuple(g.strip() for g in generators.split(",") if g.strip()),
            generator_options=_generator_options(cd_steps, refine_steps),
            checkpoint=str(checkpoint) if checkpoint else None,
        )
    except ValueError as exc:
        fail(str(exc))
    model = _load_base(settings, base, device, threads)
    try:
        result = run_eval(model, cfg, _progress)
    except GeneratorError as exc:
        fail(str(exc))
    write_report(result, to_markdown(result), json_path, md_path)


def bench(
    json_path: Annotated[Path, typer.Option("--json", help="Write the results here (JSON).")],
    md_path: Annotated[
        Path | None, typer.Option("--md", help="Markdown table (default: beside --json).")
    ] = None,
    base: BaseOption = DEFAULT_BASE_MODEL,
    checkpoint: CheckpointOption = None,
    docs: Annotated[int, typer.Option(help="Documents timed with every generator.")] = 4,
    generators: Annotated[
        str, typer.Option(help="Comma-separated generators to time.")
    ] = "hypernet,cd,hypernet+cd",
    cd_steps: Annotated[int | None, typer.Option(help="Steps of the `cd` generator.")] = None,
    refine_steps: Annotated[int | None, typer.Option(help="Refinement steps of `hypernet+cd`.")] = None,
    long_tokens: Annotated[
        int, typer.Option(help="Length of the long document timed with `hypernet`.")
    ] = 512,
    repeats: Annotated[int, typer.Option(help="Repeats of the long-document timing (median).")] = 3,
    device: DeviceOption = None,
    threads: ThreadsOption = 1,
    config: ConfigOption = None,
) -> None:
    """Time the generators side by side (ratios), a 512-token document, and peak memory."""
    settings = settings_for(config)
    from hypernet.bench import BenchConfig, run_bench, to_markdown
    from hypernet.generators import GeneratorError

    try:
        cfg = BenchConfig(
            docs=docs,
            generators=tuple(g.strip() for g in generators.split(",") if g.strip()),
            generator_options=_generator_options(cd_steps, refine_steps),
            checkpoint=str(checkpoint) if checkpoint else None,
            long_tokens=long_tokens,
            repeats=repeats,
        )
    except ValueError as exc:
        fail(str(exc))
    model = _load_base(settings, base, device, threads)
    try:
        result = run_bench(model, cfg, _progress)
    except GeneratorError as exc:
        fail(str(exc))
    write_report(result, to_markdown(result), json_path, md_path)


def register(app: typer.Typer) -> None:
    """Transitional: adds these commands to ``app`` for the hypernet tests that build their own app
    (tests/test_eval.py, tests/test_bench.py); once they use ``flows.cli.app``, this goes."""
    app.command("train-hypernet")(train_hypernet)
    app.command("eval")(evaluate)
    app.command("bench")(bench)
