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
JsonOption = Annotated[Path, typer.Option("--json", help="Write the results here (JSON).")]
MdOption = Annotated[Path | None, typer.Option("--md", help="Markdown table (default: beside --json).")]
T2L_CHECKPOINT_HELP = "T2L checkpoint dir (default: the one shipped)."
T2LCheckpointOption = Annotated[Path | None, typer.Option("--checkpoint", help=T2L_CHECKPOINT_HELP)]
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


def config_fields(cls: type, sets: list[str] | None, **given: Any) -> Any:
    """``cls`` (a frozen dataclass) from ``--set KEY=VALUE`` items: values parsed as JSON, lists as tuples.

    The one override style of the ML commands (``train-hypernet`` uses the same ``--set``).
    """
    from hypernet.train import parse_overrides

    try:
        options = parse_overrides(sets or [])
    except ValueError as exc:
        fail(str(exc))
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        fail(f"unknown --set field(s) {unknown}; known: {sorted(known)}")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    try:
        return cls(**(given | options))
    except (TypeError, ValueError) as exc:
        fail(str(exc))


def evaluate(
    json_path: JsonOption,
    md_path: MdOption = None,
    base: BaseOption = DEFAULT_BASE_MODEL,
    checkpoint: CheckpointOption = None,
    corpus: Annotated[
        Path | None,
        typer.Option(help="Built corpus for the real section (default: <INSTILL_HOME>/corpus when built)."),
    ] = None,
    gates: Annotated[
        bool, typer.Option("--gates/--no-gates", help="Run the QA gates on real adapters.")
    ] = True,
    sets: SetOption = None,
    t2l: Annotated[
        bool, typer.Option("--t2l/--no-t2l", help="Add the Text-to-LoRA section (as `instill eval-t2l`).")
    ] = False,
    t2l_checkpoint: Annotated[Path | None, typer.Option("--t2l-checkpoint", help=T2L_CHECKPOINT_HELP)] = None,
    t2l_sets: Annotated[
        list[str] | None, typer.Option("--t2l-set", help="Override a T2LEvalConfig field: KEY=VALUE.")
    ] = None,
    device: DeviceOption = None,
    threads: ThreadsOption = 1,
    config: ConfigOption = None,
) -> None:
    """Measure the generators on held-out documents: gap closed with CIs, multiple choice, exact match,
    gate pass rates, by probe type and document length; generators side by side (``--set`` any field of
    hypernet.generator_eval.EvalConfig, e.g. ``--set real_bucket_docs=[6,3,2]``); with ``--t2l`` also
    Text-to-LoRA's compliance against its controls (``--t2l-set`` any field of T2LEvalConfig)."""
    settings = settings_for(config)
    from hypernet.generator_eval import EvalConfig, run_eval, to_markdown
    from hypernet.generators import GeneratorError
    from hypernet.t2l_eval import T2LEvalConfig, run_t2l_eval
    from hypernet.t2l_eval import to_markdown as t2l_markdown
    from tasks.qa import evaluation_gate

    built = settings.home / "corpus"
    corpus_dir = corpus or (built if (built / "manifest.json").is_file() else None)
    cfg = config_fields(
        EvalConfig, sets, checkpoint=str(checkpoint) if checkpoint else None,
        corpus=str(corpus_dir) if corpus_dir else None,
    )  # fmt: skip
    t2l_cfg = config_fields(T2LEvalConfig, t2l_sets) if t2l else None  # a bad field fails before the work
    model = _load_base(settings, base, device, threads)
    try:
        result = run_eval(model, cfg, _progress, gate=evaluation_gate() if gates else None)
    except GeneratorError as exc:
        fail(str(exc))
    markdown = to_markdown(result)
    if t2l_cfg is not None:
        net, ckpt = _t2l_net(model, t2l_checkpoint)
        result["t2l"] = run_t2l_eval(model, net, t2l_cfg, _progress, checkpoint=str(ckpt))
        markdown += "\n## Text-to-LoRA\n\n" + t2l_markdown(result["t2l"])
    write_report(result, markdown, json_path, md_path)


def bench(
    json_path: JsonOption,
    md_path: MdOption = None,
    base: BaseOption = DEFAULT_BASE_MODEL,
    checkpoint: CheckpointOption = None,
    sets: SetOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = 1,
    config: ConfigOption = None,
) -> None:
    """Time the generators side by side (ratios), a 512-token document, and peak memory (``--set`` any
    field of hypernet.bench.BenchConfig, e.g. ``--set docs=2``)."""
    settings = settings_for(config)
    from hypernet.bench import BenchConfig, run_bench, to_markdown
    from hypernet.generators import GeneratorError

    cfg = config_fields(BenchConfig, sets, checkpoint=str(checkpoint) if checkpoint else None)
    model = _load_base(settings, base, device, threads)
    try:
        result = run_bench(model, cfg, _progress)
    except GeneratorError as exc:
        fail(str(exc))
    write_report(result, to_markdown(result), json_path, md_path)


def corpus_build(
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Corpus folder (default: <INSTILL_HOME>/corpus).")
    ] = None,
    packages: Annotated[
        str | None, typer.Option(help="Comma-separated subset of the source packages (default: all).")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Re-parse every file.")] = False,
    config: ConfigOption = None,
) -> None:
    """Build the hypernetwork's real-prose corpus from Debian documentation packages (reproducibly)."""
    from tasks.corpus import DEFAULT_PACKAGES, BuildConfig, CorpusError, build_corpus

    settings = settings_for(config)
    chosen = DEFAULT_PACKAGES
    if packages:
        wanted = {p.strip() for p in packages.split(",") if p.strip()}
        unknown = sorted(wanted - {p.name for p in DEFAULT_PACKAGES})
        if unknown:
            fail(f"unknown corpus package(s) {unknown}; known: {[p.name for p in DEFAULT_PACKAGES]}")
        chosen = tuple(p for p in DEFAULT_PACKAGES if p.name in wanted)
    target = out_dir or settings.home / "corpus"
    try:
        manifest = build_corpus(target, chosen, Path("/"), config=BuildConfig(cache=not no_cache))
    except CorpusError as exc:
        fail(str(exc))
    counts = manifest["counts"]
    out.print(
        f"{target}: {counts['train']} train + {counts['heldout']} held-out documents; "
        f"documents_sha256 {manifest['documents_sha256']}",
        highlight=False,
    )


# ---------------------------------------------------------------- Text-to-LoRA


def train_t2l(
    out_dir: Annotated[Path, typer.Option("--out", help="Run dir: checkpoint/, metrics.jsonl, final/.")],
    base: BaseOption = DEFAULT_BASE_MODEL,
    sets: SetOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = 1,
    config: ConfigOption = None,
) -> None:
    """Train (or resume) the Text-to-LoRA hypernetwork by SFT on the rule-built task suite; metrics go to
    MLflow. --set takes T2LTrainConfig fields (steps=600, max_minutes=50, batch_tasks=8)."""
    settings_for(config)
    from flows.train_t2l import train_t2l as train_flow
    from hypernet.t2l import T2LError
    from hypernet.t2l_train import T2LTrainConfig, T2LTrainError
    from hypernet.train import parse_overrides

    try:
        options = parse_overrides(sets or [])
        unknown = sorted(set(options) - set(T2LTrainConfig.__dataclass_fields__))
        if unknown:
            fail(f"unknown --set field(s) {unknown}; known: {sorted(T2LTrainConfig.__dataclass_fields__)}")
        result = train_flow(str(out_dir), base, options, device=device, threads=threads)
    except (T2LTrainError, T2LError, ValueError, TypeError) as exc:
        fail(str(exc))
    ce = result["heldout_ce"]
    out.print(
        f"final checkpoint {result['final']} (sha256 {result['checkpoint_sha256'][:12]}), "
        f"{result['steps']} steps on {result['device']}: held-out CE unseen descriptions "
        f"{ce['ce_unseen_desc']:.3f} "
        f"(base {ce['ce_unseen_desc_base']:.3f}), unseen behaviours {ce['ce_unseen_behaviour']:.3f} "
        f"(base {ce['ce_unseen_behaviour_base']:.3f})",
        highlight=False,
    )


def _t2l_net(base_model, checkpoint: Path | None):
    from hypernet.t2l import T2LError, load_t2l, shipped_checkpoint

    try:
        ckpt = checkpoint or shipped_checkpoint(base_model.model_id)
        return load_t2l(ckpt, base_model.device, base=base_model), ckpt
    except T2LError as exc:
        fail(str(exc))


def text_to_lora(
    description: Annotated[str, typer.Argument(help="The behaviour, in words: 'Answer in one word.'")],
    out_dir: Annotated[Path, typer.Option("--out", help="The PEFT adapter folder to write.")],
    base: BaseOption = DEFAULT_BASE_MODEL,
    checkpoint: T2LCheckpointOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = 1,
    config: ConfigOption = None,
) -> None:
    """Turn a description of behaviour into a LoRA adapter (a PEFT folder) without training anything."""
    settings = settings_for(config)
    if not description.strip():
        fail(
            "the description is empty: say what behaviour the adapter should give, e.g. 'Answer in one word.'"
        )
    from hypernet.adapter import save_adapter
    from hypernet.t2l import describe_to_lora, description_lineage

    model = _load_base(settings, base, device, threads)
    net, ckpt = _t2l_net(model, checkpoint)
    weights = describe_to_lora(model, net, description.strip())
    lineage = description_lineage(description.strip(), net, ckpt, model)
    sha = save_adapter(weights, out_dir, model.model_id, lineage)
    out.print(f"{out_dir}: T2L adapter (sha256 {sha[:12]}) for {description.strip()!r}", highlight=False)


def eval_t2l(
    json_path: JsonOption,
    md_path: MdOption = None,
    base: BaseOption = DEFAULT_BASE_MODEL,
    checkpoint: T2LCheckpointOption = None,
    sets: SetOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = 1,
    config: ConfigOption = None,
) -> None:
    """Measure Text-to-LoRA: compliance with the generated adapter vs the base, the description in the
    prompt, an oracle LoRA and a random description's adapter; preservation and time (``--set`` any field
    of hypernet.t2l_eval.T2LEvalConfig)."""
    settings = settings_for(config)
    from hypernet.t2l_eval import T2LEvalConfig, run_t2l_eval, to_markdown

    cfg = config_fields(T2LEvalConfig, sets)
    model = _load_base(settings, base, device, threads)
    net, ckpt = _t2l_net(model, checkpoint)
    result = run_t2l_eval(model, net, cfg, _progress, checkpoint=str(ckpt))
    write_report(result, to_markdown(result), json_path, md_path)


def eval_t2l_combined(
    doc: Annotated[Path, typer.Option("--doc", help="The knowledge document whose adapter is combined.")],
    json_path: JsonOption,
    md_path: MdOption = None,
    generator: Annotated[str, typer.Option("--generator", help="Knowledge generator.")] = "hypernet+cd",
    steps: Annotated[int, typer.Option("--steps", help="Its distillation steps (cd, hypernet+cd).")] = 5,
    probes: Annotated[int, typer.Option("--probes", help="The document's sentence probes.")] = 8,
    base: BaseOption = DEFAULT_BASE_MODEL,
    checkpoint: T2LCheckpointOption = None,
    sets: SetOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = 1,
    config: ConfigOption = None,
) -> None:
    """Measure an instruction adapter applied together with a knowledge adapter (as `ask` does):
    compliance and the document's answer NLL, each alone and together (``--set`` any field of
    hypernet.t2l_combined.CombinedEvalConfig)."""
    settings = settings_for(config)
    from hypernet.generators import make_generator
    from hypernet.probes import sentence_probes
    from hypernet.t2l_combined import CombinedEvalConfig, run_combined_eval, to_markdown
    from tasks.parse import parse_document

    cfg = config_fields(CombinedEvalConfig, sets)
    text = parse_document(doc.read_bytes(), doc.name).text
    model = _load_base(settings, base, device, threads)
    net, ckpt = _t2l_net(model, checkpoint)
    options = {"steps": steps} if generator in ("cd", "hypernet+cd") else {}
    made = make_generator(generator, model, options).generate(text)
    _progress({"knowledge_adapter": generator, "seconds": round(made.seconds, 1)})
    meta = {"document": str(doc), "generator": generator, "steps": steps, "checkpoint": str(ckpt)}
    found = sentence_probes(text, max_probes=probes, seed=0)
    result = run_combined_eval(model, net, made.weights, found, cfg, _progress, **meta)
    write_report(result, to_markdown(result), json_path, md_path)
