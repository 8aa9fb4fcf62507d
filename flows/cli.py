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
app.command("refresh")(kb.refresh)
app.command("generate")(kb.generate)
app.command("promote")(kb.promote)
app.command("rollback")(kb.rollback)
app.command("releases")(kb.releases)
app.command("status")(kb.status)
audit_app.command("adapter")(kb.audit_adapter)
audit_app.command("doc")(kb.audit_doc)
db_app.command("upgrade")(kb.db_upgrade)

# The ML engineer's commands.
app.command("train-hypernet")(ml.train_hypernet)
app.command("eval")(ml.evaluate)
app.command("bench")(ml.bench)
corpus_app.command("build")(ml.corpus_build)

# Answering from the knowledge base, and serving it.
app.command("ask")(sv.ask)
app.command("serve")(sv.serve)
app.command("export")(sv.export)
app.command("validate-adapter")(sv.validate)
app.command("eval-kb")(sv.eval_kb)


if __name__ == "__main__":
    app()
