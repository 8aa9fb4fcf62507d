"""The refresh flow end to end on a tiny random model: real files, catalog, store, MLflow and Prefect."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter, AliasEvent, Document, DocumentVersion
from tasks.catalog.types import AdapterState, DocumentState
from tasks.runtime import runtime
from tests.fixtures.kb import DOCS, instill, refresh


def _run(config: Path, tmp_path: Path, name: str) -> tuple[int, dict, str]:
    return refresh(config, tmp_path / f"{name}.json")


def test_refresh_generates_registers_and_then_only_follows_changes(prefect_server, kb, tmp_path):
    code, first, output = _run(kb, tmp_path, "first")
    assert code == 0, output
    assert first["changed"] == {"added": 3, "modified": 0, "renamed": 0, "deleted": 0}
    assert first["generated"] == 3 and first["failed"] == [] and len(first["registered"]) == 3
    models = {r["document"]: r["model"] for r in first["registered"]}
    registry = runtime(kb).registry
    for model in models.values():
        assert registry.alias(model, "production") == "1"

    code, second, output = _run(kb, tmp_path, "second")
    assert code == 0, output
    assert sum(second["changed"].values()) == 0 and second["generated"] == 0 and second["registered"] == []
    assert "0 changed" in output

    docs = kb.parent / "docs"
    (docs / "alpha.md").write_text(DOCS["alpha.md"] + "\nA second engineer, Ilse Brand, joined in 2020.\n")
    (docs / "beta.txt").rename(docs / "beta-renamed.txt")
    (docs / "gamma.html").unlink()
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    code, third, output = _run(kb, tmp_path, "third")
    assert code == 1, "a failed document makes the exit status non-zero"
    assert third["changed"] == {"added": 1, "modified": 1, "renamed": 1, "deleted": 1}
    assert third["generated"] == 1, "the rename with unchanged text is not regenerated"
    assert [r["model"] for r in third["registered"]] == [models["docs:alpha.md"]]
    assert third["registered"][0]["version"] == "2"
    assert [f["document"] for f in third["failed"]] == ["docs:broken.pdf"]
    assert "broken.pdf" in third["failed"][0]["reason"]
    assert third["retired"] == 1
    assert registry.alias(models["docs:alpha.md"], "production") == "2"
    assert registry.alias(models["docs:beta.txt"], "production") == "1", "a rename keeps the model"
    assert registry.alias(models["docs:gamma.html"], "production") is None

    with session_scope(runtime(kb).sessions) as s:
        states = {d.current_path: d.state for d in s.scalars(select(Document))}
        assert states == {
            "alpha.md": DocumentState.ACTIVE,
            "beta-renamed.txt": DocumentState.ACTIVE,
            "gamma.html": DocumentState.DELETED,
            "broken.pdf": DocumentState.FAILED,
        }
        broken = s.scalar(select(DocumentVersion).where(DocumentVersion.path == "broken.pdf"))
        assert broken.error and broken.text_sha256 is None
        gamma_events = s.scalars(
            select(AliasEvent)
            .where(AliasEvent.registered_model == models["docs:gamma.html"])
            .order_by(AliasEvent.id)
        ).all()
        assert [(e.alias, e.from_version, e.to_version) for e in gamma_events][-2:] == [
            ("production", "1", None),
            ("candidate", "1", None),
        ]
        alpha_states = [
            a.state
            for a in s.scalars(select(Adapter).where(Adapter.registered_model == models["docs:alpha.md"]))
        ]
        assert alpha_states == [AdapterState.RETIRED, AdapterState.PRODUCTION]


def test_registered_adapter_loads_with_peft(prefect_server, kb, tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    code, first, output = _run(kb, tmp_path, "first")
    assert code == 0, output
    with session_scope(runtime(kb).sessions) as s:
        adapter = s.scalars(select(Adapter)).first()
        folder = runtime(kb).store.get_dir(adapter.store_uri)
        lineage = json.loads((folder / "instill.json").read_text())
        assert lineage["text_sha256"] == adapter.document_version.text_sha256
        assert lineage["generator"]["fingerprint"] == adapter.generator.fingerprint
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, folder)
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_bad_config_names_the_key(tmp_path):
    config = tmp_path / "instill.yaml"
    config.write_text("name: kb\nsources:\n  - kind: local\n    name: docs\n")
    code, output = instill("refresh", "--config", str(config))
    assert code == 2
    assert "sources.0.path" in output and "Traceback" not in output


def test_a_home_from_the_previous_layout_keeps_working(prefect_server, kb, tmp_path):
    """A home whose catalog is at the last revision before `generators` and typed cursors (0001)."""
    from tasks.catalog.db import current_revision, downgrade, head_revision
    from tasks.runtime import forget_runtimes

    code, first, output = _run(kb, tmp_path, "first")
    assert code == 0, output
    url = runtime(kb).settings.catalog
    downgrade(url, "0001")
    forget_runtimes()

    code, second, output = _run(kb, tmp_path, "second")
    assert code == 0, output
    assert current_revision(url) == head_revision()
    assert sum(second["changed"].values()) == 0 and second["generated"] == 0 and second["registered"] == []
    code, output = instill("status", "--config", str(kb), "--json")
    assert code == 0 and {r["model"] for r in json.loads(output)} == {r["model"] for r in first["registered"]}
    (kb.parent / "docs" / "alpha.md").write_text(DOCS["alpha.md"] + "\nIts lift was rebuilt in 2003.\n")
    code, third, output = _run(kb, tmp_path, "third")
    assert code == 0 and third["generated"] == 1 and third["registered"][0]["version"] == "2", output
