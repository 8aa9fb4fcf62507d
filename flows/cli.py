"""The `instill` command line: the one place where every command is registered.

A command is a plain function in ``flows/kb_commands.py`` (commands on a knowledge base) or
``flows/ml_commands.py`` (training and measuring generators), using the helpers of ``flows/console.py``
(``--config``, settings, errors, printing). Adding a command: write the function there, add one line here.
"""

from __future__ import annotations

import typer

from flows import kb_commands as kb
from flows import ml_commands as ml
from flows import serve_commands as sv
from flows.bench_pipeline import bench_pipeline
from flows.bench_workers import bench_workers
from flows.console import command  # every error of the environment or config: one line, non-zero exit
from flows.pool_setup import pool_setup

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Keep a model's knowledge current with adapters."
)
audit_app = typer.Typer(
    no_args_is_help=True, help="Lineage: adapter -> document revision, and every move after."
)
db_app = typer.Typer(no_args_is_help=True, help="The SQL catalog.")
corpus_app = typer.Typer(no_args_is_help=True, help="The hypernetwork's real-text training corpus.")
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")
app.add_typer(corpus_app, name="corpus")

# The weekly job and its operations.
app.command("refresh")(command(kb.refresh))
app.command("generate")(command(kb.generate))
app.command("promote")(command(kb.promote))
app.command("rollback")(command(kb.rollback))
app.command("releases")(command(kb.releases))
app.command("status")(command(kb.status))
audit_app.command("adapter")(command(kb.audit_adapter))
audit_app.command("doc")(command(kb.audit_doc))
db_app.command("upgrade")(command(kb.db_upgrade))

# The ML engineer's commands.
app.command("train-hypernet")(command(ml.train_hypernet))
app.command("eval")(command(ml.evaluate))
app.command("bench")(command(ml.bench))
app.command("bench-pipeline")(command(bench_pipeline))
app.command("bench-workers")(command(bench_workers))
app.command("pool-setup")(command(pool_setup))
app.command("train-t2l")(command(ml.train_t2l))
app.command("eval-t2l")(command(ml.eval_t2l))
app.command("eval-t2l-combined")(command(ml.eval_t2l_combined))
app.command("text-to-lora")(command(ml.text_to_lora))
corpus_app.command("build")(command(ml.corpus_build))

# Answering from the knowledge base, and serving it.
app.command("ask")(command(sv.ask))
app.command("serve")(command(sv.serve))
app.command("export")(command(sv.export))
app.command("validate-adapter")(command(sv.validate))
app.command("eval-kb")(command(sv.eval_kb))


if __name__ == "__main__":
    app()
