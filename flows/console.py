"""What every `instill` command shares: the --config option, settings, logging, errors and printing."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from tasks.settings import ConfigError, GeneratorConfig, Settings, apply_runtime_env, load_knowledge_base

console = Console(stderr=True, soft_wrap=True)  # progress, logs and errors
out = Console()  # results

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Knowledge-base file (default: $INSTILL_CONFIG or instill.yaml)."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config field: KEY=VALUE (repeatable).")
]


def settings_for(config: Path | None) -> Settings:
    """Settings for one command (``--config`` else $INSTILL_CONFIG), offline env and logging in place."""
    settings = Settings() if config is None else Settings(config=config)
    apply_runtime_env(settings.home)
    _configure_logging()
    return settings


def generator_config(settings: Settings) -> GeneratorConfig:
    """The knowledge base's generator when its file exists, else the default generator."""
    if not settings.config.is_file():
        return GeneratorConfig()
    with user_errors():
        return load_knowledge_base(settings.config).generator


def _configure_logging() -> None:
    handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("flows", "tasks", "hypernet"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def user_errors(*extra: type[Exception]) -> Iterator[None]:
    """Errors the user can fix (a bad config, an unknown document, ...) end the command with their message."""
    from tasks.lifecycle import LifecycleError

    try:
        yield
    except (LifecycleError, ConfigError, *extra) as exc:
        fail(str(exc))


def print_rows(rows: list[dict], as_json: bool, title: str) -> None:
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print(f"no {title}")
        return
    table = Table(*rows[0].keys(), title=title)
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row.values()))
    out.print(table)


def print_record(record: dict, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(record))
        return
    table = Table("field", "value", show_header=False)
    for key, value in record.items():
        if isinstance(value, list):
            continue
        shown = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
        table.add_row(key, shown)
    out.print(table)
    for key, value in record.items():
        if isinstance(value, list) and value:
            print_rows(value if isinstance(value[0], dict) else [{"value": v} for v in value], False, key)


def write_report(result: dict[str, Any], markdown: str, json_path: Path, md_path: Path | None) -> None:
    """Write a result as JSON and Markdown (beside the JSON unless named) and print the Markdown."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md_path = md_path or json_path.with_suffix(".md")
    md_path.write_text(markdown, encoding="utf-8")
    out.print(markdown, markup=False, highlight=False)
    console.print(f"wrote {json_path} and {md_path}")
