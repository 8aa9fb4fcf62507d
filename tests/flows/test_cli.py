"""The `instill` commands a user runs outside a refresh: generate, db upgrade, and a server catalog."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from sqlalchemy import func, select

from hypernet.adapter import adapter_sha256, load_adapter
from tasks.catalog.db import current_revision, head_revision, session_factory, session_scope
from tasks.catalog.models import Adapter
from tasks.parse import parse_document
from tasks.runtime import forget_runtimes
from tests.fixtures.kb import instill, refresh

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kb" / "on-call-policy.md"


def test_generate_writes_a_peft_adapter_folder_for_one_file(kb, tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    code, output = instill("generate", str(EXAMPLE), "--out", str(out), "--config", str(kb))
    assert code == 0, output
    lineage = json.loads((out / "instill.json").read_text())
    assert lineage["text_sha256"] == parse_document(EXAMPLE.read_bytes(), EXAMPLE.name).text_sha256
    assert lineage["generator"]["kind"] == "cd"
    assert adapter_sha256(out)[:12] in output
    weights = load_adapter(out)
    assert weights.rank == 8 and weights.target_names == ["down_proj"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    assert sum("lora_B" in n for n, _ in model.named_parameters()) == 2


def test_generate_names_a_missing_or_broken_file(kb, tmp_path):
    code, output = instill(
        "generate", str(tmp_path / "none.md"), "--out", str(tmp_path / "x"), "--config", str(kb)
    )
    assert code == 2 and "none.md: no such file" in output
    broken = tmp_path / "broken.docx"
    broken.write_bytes(b"not a zip at all")
    code, output = instill("generate", str(broken), "--out", str(tmp_path / "y"), "--config", str(kb))
    assert code == 2 and "broken.docx" in output and "Traceback" not in output


def test_refresh_on_a_postgres_catalog_needs_db_upgrade_first(
    prefect_server, kb, tmp_path, postgres_databases, monkeypatch
):
    url = postgres_databases()
    monkeypatch.setenv("INSTILL_CATALOG_URL", url)
    forget_runtimes()
    code, _, output = refresh(kb, tmp_path / "early.json")
    assert code != 0 and "instill db upgrade" in output
    code, output = instill("db", "upgrade", "--config", str(kb))
    assert code == 0, output
    assert current_revision(url) == head_revision()
    forget_runtimes()
    code, summary, output = refresh(kb, tmp_path / "pg.json")
    assert code == 0, output
    assert summary["changed"]["added"] == 3 and len(summary["registered"]) == 3
    with session_scope(session_factory(url)) as s:
        assert s.scalar(select(func.count()).select_from(Adapter)) == 3
    assert not (Path(tmp_path) / ".instill" / "catalog.db").exists(), "nothing went to the embedded catalog"


def test_config_with_an_unknown_key_is_refused(tmp_path):
    config = tmp_path / "instill.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "kb",
                "sources": [{"kind": "local", "name": "d", "path": "."}],
                "promotion": {"auto_promot": True},
            }
        )
    )
    code, output = instill("refresh", "--config", str(config))
    assert code == 2 and "promotion.auto_promot" in output


def test_every_flow_has_a_command():
    import typer.main

    from flows import lifecycle as lifecycle_flows
    from flows import refresh as refresh_flows
    from flows.cli import app

    commands = set(typer.main.get_command(app).commands)
    flow_names = {
        obj.name
        for module in (refresh_flows, lifecycle_flows)
        for obj in vars(module).values()
        if hasattr(obj, "fn") and hasattr(obj, "flow_run_name")
    }
    assert flow_names == {"refresh", "promote", "rollback", "rollback-release"}
    # rollback-release is `instill rollback --release N`.
    assert {"refresh", "promote", "rollback", "generate", "status", "releases", "audit", "db"} <= commands
    assert {"train-hypernet", "eval", "bench"} <= commands


def test_every_command_takes_config():
    import typer.main

    from flows.cli import app

    def leaves(command, path: str) -> list[tuple[str, object]]:
        if hasattr(command, "commands"):  # a group
            return [leaf for name, sub in command.commands.items() for leaf in leaves(sub, f"{path} {name}")]
        return [(path, command)]

    missing = [
        path
        for path, command in leaves(typer.main.get_command(app), "instill")
        if not any("--config" in p.opts for p in command.params)
    ]
    assert missing == []


def test_corpus_build_names_an_unknown_package_in_one_line(tmp_path):
    code, output = instill("corpus", "build", "--packages", "no-such-doc", "--out", str(tmp_path / "c"))
    assert code == 2 and "no-such-doc" in output and "Traceback" not in output
    assert not (tmp_path / "c").exists()
