"""The commands on a knowledge base: refresh, generate, promote, rollback, releases, status, audit, db.

Plain functions; ``flows/cli.py`` registers them. Heavy imports (Prefect, MLflow, torch) happen inside the
commands, so `instill --help` stays instant and the offline environment is in place before they load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.console import (
    ConfigOption,
    JsonFlag,
    console,
    fail,
    generator_config,
    instructions_config,
    out,
    print_record,
    print_rows,
    settings_for,
    user_errors,
)
from tasks.settings import load_knowledge_base


def refresh(
    config: ConfigOption = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the summary as JSON here.")
    ] = None,
) -> None:
    """Pick up what changed in every source, regenerate only those adapters, register them.

    Exit status: 0 all done; 1 a document is failed (this run's or an earlier one's) or the registry
    could not be reached (the work is recorded); 2 a bad config; 3 another refresh of the knowledge base
    is running; 4 the environment (catalog, registry, home) is unusable; 143 stopped by SIGTERM.
    """
    settings = settings_for(config)
    with user_errors():
        kb = load_knowledge_base(settings.config)
    from tasks.lock import RefreshRunning, refresh_lock
    from tasks.runtime import CatalogNotReady, prepare_catalog

    stop_on_sigterm()
    with user_errors(CatalogNotReady):
        prepare_catalog(settings.catalog)
    check_store(settings, kb)
    cfg = str(settings.config.resolve())
    console.print(f"refreshing [bold]{kb.name}[/] ({len(kb.sources)} source(s)) from {settings.config}")
    try:
        with refresh_lock(settings.catalog, settings.home, kb.name, settings.lock_wait_s):
            result = _refresh_locked(cfg, kb)
    except RefreshRunning as exc:
        fail(str(exc), code=3)
    _print_summary(result)
    if json_path:
        keys = (
            "changed",
            "generated",
            "registered",
            "failed",
            "retired",
            "skipped",
            "truncated",
            "still_failed",
        )
        json_path.write_text(json.dumps({k: result[k] for k in keys}, indent=2) + "\n", encoding="utf-8")
    if result["failed"] or result["still_failed"]:
        raise typer.Exit(1)


def _refresh_locked(cfg: str, kb) -> dict:
    """Detect without Prefect; start the Prefect flow only when something needs generating or registering."""
    from flows.console import RichStepProgress
    from flows.refresh import PLAIN_STEPS, hand_over, nothing_to_do, run_refresh
    from tasks.detect import detect
    from tasks.finish import close_crashed_runs
    from tasks.runtime import runtime

    # Present while a refresh runs; found by the next one when this process dies (SIGKILL, SIGTERM, crash).
    marker = runtime(cfg).settings.home.resolve() / f"refresh-{kb.name}.running"
    crashed = close_crashed_runs(cfg, interrupted=marker.exists())
    if crashed:
        console.print(f"closed {crashed} refresh run(s) a killed refresh left open, as crashed")
    marker.touch()
    progress = RichStepProgress(console)
    with progress:
        plans = progress.each("detect", [s.name for s in kb.sources], lambda name: detect(cfg, name))
        if nothing_to_do(cfg, plans):
            result = run_refresh(cfg, None, PLAIN_STEPS, plans, progress)
        else:
            from flows.refresh import refresh as refresh_flow

            if kb.execution.distributed:
                from tasks.dispatch import require_server

                require_server(kb.execution.deployment)

            hand_over(cfg, plans, progress)
            result = refresh_flow(cfg)
    marker.unlink(missing_ok=True)
    result["crashed_runs"] = crashed
    return result


def stop_on_sigterm() -> None:
    """SIGTERM ends the refresh within a second: everything it did is committed step by step, and the
    next refresh closes its run as crashed and finishes what it left (the crash tests prove it)."""
    import os
    import signal

    def stop(signum, _frame) -> None:
        console.print("[bold red]stopped:[/] SIGTERM; the next refresh finishes what this one left")
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


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
    for failure in result.get("still_failed", []):
        out.print(f"[red]still failed[/] {failure['document']}: {failure['reason']}", highlight=False)
    for skip in result.get("skipped", []):
        out.print(f"[yellow]skipped[/] {skip['reason']}", highlight=False)
    for cut in result.get("truncated", []):
        out.print(
            f"[yellow]truncated[/] {cut['document']}: its adapter covers "
            f"{100 * cut['covered_fraction']:.1f}% of the document",
            highlight=False,
        )
    out.print(
        f"{result['generated']} generated, {result['passed']} passed QA, "
        f"{len(result['registered'])} registered, "
        f"{len(result['failed'])} failed, {result['retired']} retired"
    )


def generate(
    doc_file: Annotated[Path, typer.Argument(help="A document: md, txt, html, pdf or docx.")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Adapter folder to write (PEFT layout + instill.json).")
    ],
    config: ConfigOption = None,
) -> None:
    """Run the configured generator on one file and write its adapter folder."""
    settings = settings_for(config)
    gen_cfg = generator_config(settings)
    if not doc_file.is_file():
        fail(f"{doc_file}: no such file")
    from hypernet.generators import GeneratorError
    from tasks.generate import generate_file
    from tasks.instruction import InstructionError
    from tasks.parse import ParseError

    with user_errors(ParseError, InstructionError, GeneratorError):
        report = generate_file(settings, gen_cfg, doc_file, out_dir, instructions_config(settings))
    out.print(
        f"wrote {out_dir} with {report['generator']} in {report['seconds']:.1f} s "
        f"(adapter sha256 {report['adapter_sha256'][:12]})"
    )
    if "qa" in report:  # an instruction document: its own gate
        verdict = "passed" if report["qa"]["passed"] else "FAILED: " + "; ".join(report["qa"]["failures"])
        out.print(f"instruction gate {verdict}", highlight=False)


ActorOption = Annotated[str | None, typer.Option("--actor", help="Who is acting (default: your login name).")]
ReasonOption = Annotated[str | None, typer.Option("--reason", help="Why; recorded with the alias event.")]


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
    settings = settings_for(config)
    from tasks import lifecycle
    from tasks.release import write_release

    with user_errors():
        move = lifecycle.promote(str(settings.config), document, version, actor=actor, reason=reason)
        write_release(str(settings.config), actor=actor, reason=f"promote {document}")
    out.print(f"{move.model}: production {move.from_version or '-'} -> {move.to_version}")


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
    settings = settings_for(config)
    from tasks import lifecycle
    from tasks.release import write_release

    cfg = str(settings.config)
    if (document is None) == (release is None):
        fail("name either a DOCUMENT or --release N")
    with user_errors():
        if release is not None:
            moves = lifecycle.rollback_release(cfg, release, actor=actor, reason=reason)
        else:
            moves = [lifecycle.rollback(cfg, document, to, actor=actor, reason=reason)]
            write_release(cfg, actor=actor, reason=f"rollback {document}")
    for move in moves:
        out.print(f"{move.model}: production {move.from_version or '-'} -> {move.to_version or '-'}")
    if not moves:
        out.print("nothing to move: production already matches")


def releases(config: ConfigOption = None, as_json: JsonFlag = False) -> None:
    """List the knowledge base's releases (manifests of every document's production version)."""
    settings = settings_for(config)
    from tasks.release import list_releases

    with user_errors():
        rows = list_releases(str(settings.config))
    print_rows(rows, as_json, "releases")


def status(config: ConfigOption = None, as_json: JsonFlag = False) -> None:
    """What is in production for each live document."""
    settings = settings_for(config)
    from tasks import audit

    with user_errors():
        rows = audit.status(str(settings.config))
    print_rows(rows, as_json, "production")


def audit_adapter(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION or NAME@ALIAS")],
    config: ConfigOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Where an adapter came from: source revision, hashes, generator, base model, QA, runs, alias events."""
    settings = settings_for(config)
    from tasks import audit

    with user_errors():
        record = audit.audit_adapter(str(settings.config), ref)
    print_record(record, as_json)


def audit_doc(
    ref: Annotated[str, typer.Argument(help="SOURCE:KEY")],
    config: ConfigOption = None,
    as_json: JsonFlag = False,
) -> None:
    """A document's versions, their adapters and every alias event of its model."""
    settings = settings_for(config)
    from tasks import audit

    with user_errors():
        record = audit.audit_document(str(settings.config), ref)
    print_record(record, as_json)


def check_store(settings, kb) -> None:
    """An S3 store that cannot be reached stops the refresh before it starts, in one line (exit 4)."""
    from tasks.runtime import open_store
    from tasks.settings import S3StoreConfig

    if isinstance(kb.store, S3StoreConfig):
        open_store(settings, kb.store).check()


def db_upgrade(config: ConfigOption = None) -> None:
    """Apply the catalog's migrations (the embedded SQLite catalog is upgraded by `refresh` itself)."""
    settings = settings_for(config)
    from tasks.catalog.db import current_revision, upgrade

    upgrade(settings.catalog)
    out.print(f"catalog at revision {current_revision(settings.catalog)}")
