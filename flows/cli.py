"""The `instill` command line: wiring only; each command maps to a flow or a task-layer function.

Heavy imports (Prefect, MLflow, torch) happen inside the commands, so `instill --help` stays instant and
the offline, telemetry-free environment is in place before any of them loads.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from flows import ml_commands
from tasks.settings import ConfigError, GeneratorConfig, Settings, apply_runtime_env, load_knowledge_base

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Keep a model's knowledge current with adapters."
)
db_app = typer.Typer(no_args_is_help=True, help="The SQL catalog.")
app.add_typer(db_app, name="db")
console = Console(stderr=True, soft_wrap=True)
out = Console()

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Knowledge-base file (default: $INSTILL_CONFIG or instill.yaml)."),
]


def _settings(config: Path | None) -> Settings:
    settings = Settings() if config is None else Settings(config=config)
    apply_runtime_env(settings.home)
    _configure_logging()
    return settings


def _configure_logging() -> None:
    handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("flows", "tasks", "hypernet"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@app.command()
def refresh(
    config: ConfigOption = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the summary as JSON here.")
    ] = None,
) -> None:
    """Pick up what changed in every source, regenerate only those adapters, register them."""
    settings = _settings(config)
    try:
        kb = load_knowledge_base(settings.config)
    except ConfigError as exc:
        _fail(str(exc))
    from flows.refresh import refresh as refresh_flow
    from tasks.runtime import CatalogNotReady, prepare_catalog

    try:
        prepare_catalog(settings.catalog)
    except CatalogNotReady as exc:
        _fail(str(exc))

    console.print(f"refreshing [bold]{kb.name}[/] ({len(kb.sources)} source(s)) from {settings.config}")
    result = refresh_flow(str(settings.config.resolve()))
    _print_summary(result)
    if json_path:
        keys = ("changed", "generated", "registered", "failed", "retired")
        json_path.write_text(json.dumps({k: result[k] for k in keys}, indent=2) + "\n", encoding="utf-8")
    if result["failed"]:
        raise typer.Exit(1)


def _print_summary(result: dict) -> None:
    changed = result["changed"]
    total = sum(changed.values())
    detail = ", ".join(f"{n} {kind}" for kind, n in changed.items() if n)
    out.print(f"[bold]{total} changed[/]" + (f" ({detail})" if detail else ""))
    if result["rows"]:
        table = Table("document", "change", "status", "detail", title="changes")
        for row in result["rows"]:
            style = "red" if row["status"] == "failed" else None
            table.add_row(row["document"], row["change"], row["status"], row["detail"], style=style)
        out.print(table)
    if result["registered"]:
        table = Table("model", "version", "document", title="registered")
        for row in result["registered"]:
            table.add_row(row["model"], str(row["version"]), row["document"])
        out.print(table)
    for failure in result["failed"]:
        out.print(f"[red]failed[/] {failure['document']}: {failure['reason']}", highlight=False)
    out.print(
        f"{result['generated']} generated, {result['passed']} passed QA, "
        f"{len(result['registered'])} registered, "
        f"{len(result['failed'])} failed, {result['retired']} retired"
    )


@app.command()
def generate(
    doc_file: Annotated[Path, typer.Argument(help="A document: md, txt, html, pdf or docx.")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Adapter folder to write (PEFT layout + instill.json).")
    ],
    config: ConfigOption = None,
) -> None:
    """Run the configured generator on one file and write its adapter folder."""
    settings = _settings(config)
    gen_cfg = GeneratorConfig()
    if settings.config.is_file():
        try:
            gen_cfg = load_knowledge_base(settings.config).generator
        except ConfigError as exc:
            _fail(str(exc))
    if not doc_file.is_file():
        _fail(f"{doc_file}: no such file")
    from tasks.generate import generate_file
    from tasks.parse import ParseError

    try:
        report = generate_file(settings, gen_cfg, doc_file, out_dir)
    except ParseError as exc:
        _fail(str(exc))
    out.print(
        f"wrote {out_dir} with {report['generator']} in {report['seconds']:.1f} s "
        f"(adapter sha256 {report['adapter_sha256'][:12]})"
    )


ActorOption = Annotated[str | None, typer.Option("--actor", help="Who is acting (default: your login name).")]
ReasonOption = Annotated[str | None, typer.Option("--reason", help="Why; recorded with the alias event.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command()
def promote(
    document: Annotated[str, typer.Argument(help="SOURCE:KEY or the document's registered model name.")],
    version: Annotated[
        str | None, typer.Option("--version", help="Registry version (default: candidate).")
    ] = None,
    actor: ActorOption = None,
    reason: ReasonOption = None,
    config: ConfigOption = None,
) -> None:
    """Point a document's `production` alias at a version (default: its candidate)."""
    settings = _settings(config)
    from tasks import lifecycle

    with _lifecycle_errors():
        move = lifecycle.promote(str(settings.config), document, version, actor=actor, reason=reason)
        lifecycle.write_release(str(settings.config), actor=actor, reason=f"promote {document}")
    out.print(f"{move.model}: production {move.from_version or '-'} -> {move.to_version}")


@app.command()
def rollback(
    document: Annotated[str | None, typer.Argument(help="SOURCE:KEY or registered model name.")] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="Version (default: the previous production).")
    ] = None,
    release: Annotated[str | None, typer.Option("--release", help="Restore a whole release instead.")] = None,
    actor: ActorOption = None,
    reason: ReasonOption = None,
    config: ConfigOption = None,
) -> None:
    """Move `production` back: for one document, or for every document to a release's versions."""
    settings = _settings(config)
    from tasks import lifecycle

    cfg = str(settings.config)
    if (document is None) == (release is None):
        _fail("name either a DOCUMENT or --release N")
    with _lifecycle_errors():
        if release is not None:
            moves = lifecycle.rollback_release(cfg, release, actor=actor, reason=reason)
        else:
            moves = [lifecycle.rollback(cfg, document, to, actor=actor, reason=reason)]
            lifecycle.write_release(cfg, actor=actor, reason=f"rollback {document}")
    for move in moves:
        out.print(f"{move.model}: production {move.from_version or '-'} -> {move.to_version or '-'}")
    if not moves:
        out.print("nothing to move: production already matches")


@app.command()
def releases(config: ConfigOption = None, as_json: JsonFlag = False) -> None:
    """List the knowledge base's releases (manifests of every document's production version)."""
    settings = _settings(config)
    from tasks import lifecycle

    rows = lifecycle.list_releases(str(settings.config))
    _print_rows(rows, as_json, "releases")


@app.command()
def status(config: ConfigOption = None, as_json: JsonFlag = False) -> None:
    """What is in production for each live document."""
    settings = _settings(config)
    from tasks import audit

    _print_rows(audit.status(str(settings.config)), as_json, "production")


audit_app = typer.Typer(
    no_args_is_help=True, help="Lineage: adapter -> document revision, and every move since."
)
app.add_typer(audit_app, name="audit")


@audit_app.command("adapter")
def audit_adapter(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION or NAME@ALIAS")],
    config: ConfigOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Where an adapter came from: source revision, hashes, generator, base model, QA, runs, alias events."""
    settings = _settings(config)
    from tasks import audit

    with _lifecycle_errors():
        record = audit.audit_adapter(str(settings.config), ref)
    _print_record(record, as_json)


@audit_app.command("doc")
def audit_doc(
    ref: Annotated[str, typer.Argument(help="SOURCE:KEY")],
    config: ConfigOption = None,
    as_json: JsonFlag = False,
) -> None:
    """A document's versions, their adapters and every alias event of its model."""
    settings = _settings(config)
    from tasks import audit

    with _lifecycle_errors():
        record = audit.audit_document(str(settings.config), ref)
    _print_record(record, as_json)


@contextmanager
def _lifecycle_errors() -> Iterator[None]:
    from tasks.lifecycle import LifecycleError

    try:
        yield
    except (LifecycleError, ConfigError) as exc:
        _fail(str(exc))


def _print_rows(rows: list[dict], as_json: bool, title: str) -> None:
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


def _print_record(record: dict, as_json: bool) -> None:
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
            _print_rows(value if isinstance(value[0], dict) else [{"value": v} for v in value], False, key)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply the catalog's migrations (the embedded SQLite catalog is upgraded by `refresh` itself)."""
    settings = _settings(config)
    from tasks.catalog.db import current_revision, upgrade

    upgrade(settings.catalog)
    out.print(f"catalog at revision {current_revision(settings.catalog)}")


ml_commands.register(app)


def main() -> None:  # pragma: no cover - console-script shim
    sys.exit(app())
