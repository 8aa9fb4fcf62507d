"""Commands over the production adapters: `ask`, `serve`, `export`, `eval-kb` (registered in cli.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.console import ConfigOption, JsonFlag, console, fail, out, settings_for, user_errors

StrategyOption = Annotated[
    str | None,
    typer.Option("--strategy", help="top1 | cat | linear | rag | rag+cat (default: serving.strategy)."),
]


def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    doc: Annotated[
        list[str] | None,
        typer.Option("--doc", help="SOURCE:KEY or model name (repeatable); default: routed."),
    ] = None,
    strategy: StrategyOption = None,
    alias: Annotated[str, typer.Option("--alias", help="The registry alias to answer with.")] = "production",
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Most new tokens.")] = None,
    instruction: Annotated[
        bool | None,
        typer.Option(
            "--instruction/--no-instruction",
            help="Apply the production instruction adapter (default: serving.apply_instruction).",
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Answer a question from the knowledge base's production adapters, streaming the answer."""
    settings = settings_for(config)
    from tasks.answer import Answerer, AnswerError

    with user_errors(AnswerError):
        answerer = Answerer(
            str(settings.config), alias=alias, strategy=strategy, apply_instruction=instruction
        )
        plan = answerer.plan(question, doc)
        finish: dict = {}
        pieces = []
        for piece in answerer.stream(
            [{"role": "user", "content": question}], plan, max_tokens, finish=finish
        ):
            pieces.append(piece)
            if not as_json:
                out.print(piece, end="", highlight=False, markup=False)
    if as_json:
        record = {
            "question": question,
            "answer": "".join(pieces).strip(),
            "strategy": plan.strategy,
            "routed": plan.routed,
            "adapters": plan.describe(),
            "instructions": plan.describe_instructions(),
            "finish_reason": finish.get("reason"),
        }
        out.print_json(json.dumps(record))
        return
    out.print()
    how = "routed" if plan.routed else "named"
    console.print(f"[dim]strategy {plan.strategy} ({how}); adapters:[/]", highlight=False)
    for entry in plan.describe():
        score = "" if entry["score"] is None else f"  score {entry['score']:.3f}"
        console.print(
            f"[dim]  {entry['document']}  {entry['model']} v{entry['version']}  "
            f"sha256 {entry['adapter_sha256'][:12]}{score}[/]",
            highlight=False,
        )
    for entry in plan.describe_instructions():
        console.print(
            f"[dim]instruction adapter: {entry['document']}  {entry['model']} v{entry['version']}  "
            f"sha256 {entry['adapter_sha256'][:12]}[/]",
            highlight=False,
        )


def export(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the adapters into.")],
    fmt: Annotated[str, typer.Option("--format", help="vllm | lorax | peft")] = "peft",
    alias: Annotated[str, typer.Option("--alias", help="The registry alias to export.")] = "production",
    max_lora_rank: Annotated[
        int | None, typer.Option("--max-lora-rank", help="vLLM's --max-lora-rank to check against.")
    ] = None,
    config: ConfigOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Write the alias's adapters for a serving stack, checked against vLLM's adapter rules."""
    settings = settings_for(config)
    from tasks.export import ExportError
    from tasks.export import export as run_export

    with user_errors(ExportError):
        index = run_export(str(settings.config), fmt, out_dir, alias, max_lora_rank)  # type: ignore[arg-type]
    if as_json:
        out.print_json(json.dumps(index))
        return
    out.print(f"{len(index['adapters'])} adapters ({alias}) written to {out_dir} for {fmt}")
    for problem in index["problems"]:
        console.print(f"[yellow]vLLM would refuse:[/] {problem}", highlight=False)
    if fmt == "vllm":
        out.print(f"vllm serve {index['base_model']} {' '.join(index['vllm_args'])}", highlight=False)


def validate(
    adapter_dirs: Annotated[list[Path], typer.Argument(help="Adapter folders to check.")],
    max_lora_rank: Annotated[int, typer.Option("--max-lora-rank")] = 16,
    architecture: Annotated[str, typer.Option("--architecture")] = "LlamaForCausalLM",
    config: ConfigOption = None,
) -> None:
    """Check adapter folders against vLLM's rules; exit 1 and say what is wrong if any breaks one.

    ``--config`` is accepted like every command's; the check reads nothing but the folders."""
    from tasks.export import validate_vllm

    problems = [p for d in adapter_dirs for p in validate_vllm(d, max_lora_rank, architecture)]
    for problem in problems:
        out.print(str(problem), highlight=False)
    if problems:
        raise typer.Exit(1)
    out.print(f"{len(adapter_dirs)} adapter(s) conform to vLLM's rules (--max-lora-rank {max_lora_rank})")


def serve(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    alias: Annotated[str, typer.Option("--alias", help="The registry alias to serve.")] = "production",
    strategy: StrategyOption = None,
    poll_seconds: Annotated[
        float | None, typer.Option("--poll-seconds", help="Registry re-read interval (serving.poll_seconds).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """An OpenAI-compatible API (/v1/models, /v1/chat/completions) and a page (/) over the knowledge base."""
    settings = settings_for(config)
    import uvicorn

    from flows.serve import create_app
    from tasks.answer import Answerer, AnswerError
    from tasks.runtime import runtime
    from tasks.webhook import ensure_webhook

    hook = ensure_webhook(runtime(str(settings.config)))  # before the model loads: a bad setting fails fast
    with user_errors(AnswerError):
        answerer = Answerer(str(settings.config), alias=alias, strategy=strategy, poll_seconds=poll_seconds)
    if hook is not None:
        console.print(
            f"registry webhook {hook.name} {'created' if hook.created else 'updated'}: alias moves are "
            f"posted to {hook.url}",
            highlight=False,
        )
    console.print(
        f"serving {answerer.name} ({len(answerer.documents())} documents, strategy "
        f"{answerer.strategy}) on http://{host}:{port}",
        highlight=False,
    )
    uvicorn.run(create_app(answerer), host=host, port=port, log_level="warning")


def eval_kb(
    out_dir: Annotated[Path, typer.Option("--out", help="Where the report goes.")] = Path("docs"),
    sizes: Annotated[
        str, typer.Option("--sizes", help="Knowledge-base sizes, comma-separated.")
    ] = "20,200,1000",
    generator: Annotated[str, typer.Option("--generator", help="hypernet | cd | hypernet+cd")] = "hypernet",
    steps: Annotated[int, typer.Option("--steps", help="CD steps (cd generators).")] = 10,
    base_model: Annotated[str, typer.Option("--base-model")] = "smollm2-135m-instruct",
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N questions.")] = None,
    distractors: Annotated[
        Path | None, typer.Option("--distractors", help="A documents.jsonl, or a folder of *.txt files.")
    ] = None,
    embed_max_size: Annotated[
        int,
        typer.Option("--embed-max-size", help="Largest size the embedding router is measured at (0: none)."),
    ] = 200,
    embed_budget: Annotated[
        float | None,
        typer.Option(
            "--embed-budget-minutes",
            help="Stop embedding after this long; the router is measured up to the size reached (cached).",
        ),
    ] = None,
    strategies: Annotated[
        str | None,
        typer.Option(
            "--strategies",
            help="Strategies at every size, comma-separated (base,top1,cat,linear,rag,rag+cat); "
            "'none' measures routing only. Default: all at the smallest size, top1,rag at the others.",
        ),
    ] = None,
    em_strategies: Annotated[
        str,
        typer.Option(
            "--em-strategies", help="Strategies whose greedy exact match is measured ('none': no EM)."
        ),
    ] = "top1,rag",
    merge: Annotated[
        bool,
        typer.Option("--merge", help="Fold the figures into the report in --out instead of replacing it."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Measure routing and answering strategies over the shipped multi-document question set."""
    settings = settings_for(config)
    from tasks.eval_kb import EvalKBConfig, run_eval_kb

    cfg = EvalKBConfig(
        sizes=[int(s) for s in sizes.split(",") if s.strip()],
        generator=generator,
        steps=steps,
        base_model=base_model,
        limit=limit,
        distractors=distractors,
        embed_max_size=embed_max_size,
        embed_budget_minutes=embed_budget,
        strategies=_strategies(strategies),
        em_strategies=_strategies(em_strategies) or (),
        merge=merge,
    )
    try:
        result = run_eval_kb(cfg, settings, out_dir, log=lambda m: console.print(m, highlight=False))
    except ValueError as exc:
        fail(str(exc))
    out.print(f"best strategy: {result['best_strategy']}; report in {out_dir / 'eval-kb.md'}")


def _strategies(given: str | None) -> tuple[str, ...] | None:
    from tasks.eval_kb import STRATEGY_ORDER

    if given is None:
        return None
    names = tuple(n.strip() for n in given.split(",") if n.strip() and n.strip() != "none")
    unknown = [n for n in names if n not in STRATEGY_ORDER]
    if unknown:
        fail(f"--strategies: unknown {', '.join(unknown)} (one of {', '.join(STRATEGY_ORDER)}, or none)")
    return names
