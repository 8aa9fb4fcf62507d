"""What every `instill` command shares: the --config option, settings, logging, errors and printing."""

from __future__ import annotations

import errno
import functools
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from tasks.settings import (
    ConfigError,
    GeneratorConfig,
    InstructionsConfig,
    Settings,
    apply_runtime_env,
    load_knowledge_base,
)

console = Console(stderr=True, soft_wrap=True)  # progress, logs and errors
# Results. Piped, rich would cut tables to 80 columns: a width no table reaches keeps SOURCE:KEY and hashes
# whole (tables are as wide as their content; nothing is padded to this width).
out = Console() if Console().is_terminal else Console(width=100_000)

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
    from pydantic import ValidationError

    try:
        settings = Settings() if config is None else Settings(config=config)
    except ValidationError as exc:
        fail(f"environment: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}")
    apply_runtime_env(settings.home)
    _configure_logging()
    return settings


ENVIRONMENT_EXIT = 4


def command(fn: Callable) -> Callable:
    """Wrap a command so that every error of its environment or config is one line and a non-zero exit.

    Config errors exit 2; an unreachable catalog, registry or S3, or an unusable home exit 4. A bug still
    shows its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import OperationalError, ProgrammingError

        from tasks.errors import EnvironmentProblem, first_line

        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc))
        except EnvironmentProblem as exc:
            fail(first_line(exc, 400), ENVIRONMENT_EXIT)
        except (OperationalError, ProgrammingError) as exc:
            fail(f"catalog: {first_line(exc.orig or exc)}", ENVIRONMENT_EXIT)
        except PermissionError as exc:
            fail(f"permission denied: {exc.filename or first_line(exc)}", ENVIRONMENT_EXIT)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.ENOSPC, errno.EACCES):
                fail(f"{exc.filename or ''}: {exc.strerror}", ENVIRONMENT_EXIT)
            raise
        except Exception as exc:
            if _is_registry_error(exc):
                fail(f"MLflow registry: {first_line(exc)}", ENVIRONMENT_EXIT)
            if _is_s3_error(exc):
                fail(f"S3: {first_line(exc)}", ENVIRONMENT_EXIT)
            raise

    return wrapper


def _is_registry_error(exc: Exception) -> bool:
    return type(exc).__module__.startswith("mlflow")


def _is_s3_error(exc: Exception) -> bool:
    return type(exc).__module__.startswith(("botocore", "boto3"))


class RichStepProgress:
    """A rich progress bar per long step on a terminal; silent when stderr is piped."""

    def __init__(self, console: Console) -> None:
        self.enabled = console.is_terminal
        self._progress = None
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._progress = Progress(
                "{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )

    def __enter__(self) -> RichStepProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def each(self, label: str, items, fn):
        items = list(items)
        if self._progress is None or not items:
            return [fn(item) for item in items]
        bar = self._progress.add_task(label, total=len(items))
        out = []
        for item in items:
            out.append(fn(item))
            self._progress.advance(bar)
        return out


def generator_config(settings: Settings) -> GeneratorConfig:
    """The knowledge base's generator when its file exists, else the default generator."""
    if not settings.config.is_file():
        return GeneratorConfig()
    with user_errors():
        return load_knowledge_base(settings.config).generator


def instructions_config(settings: Settings) -> InstructionsConfig:
    """The knowledge base's ``instructions`` section (T2L options, gate) when its file exists, else the
    defaults."""
    if not settings.config.is_file():
        return InstructionsConfig()
    with user_errors():
        return load_knowledge_base(settings.config).instructions


class _Redact(logging.Filter):
    """No credentials inside a URL reach a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from tasks.sources.base import redact

        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def _configure_logging() -> None:
    handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_Redact())
    for name in ("prefect", "mlflow", "alembic"):
        logging.getLogger(name).addFilter(_Redact())
    for name in ("flows", "tasks", "hypernet"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def fail(message: str, code: int = 2) -> NoReturn:
    from tasks.sources.base import redact

    console.print("[bold red]error:[/] ", end="", highlight=False)
    console.print(redact(message), highlight=False, markup=False)
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
