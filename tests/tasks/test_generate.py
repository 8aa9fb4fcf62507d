"""The `generate` step: one adapter folder per text and generator; the same text reuses it."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter
from tasks.generate import generate, generate_file
from tasks.runtime import runtime
from tasks.settings import GeneratorConfig
from tasks.sweep import sweep
from tests.fixtures.kb import DOCS, record_all


def test_generate_stores_an_adapter_with_its_lineage_and_reuses_it_for_the_same_text(kb):
    (kb.parent / "docs" / "alpha-copy.md").write_text(DOCS["alpha.md"])
    record_all(kb)
    todo = sweep(str(kb), "docs")
    outcomes = [generate(str(kb), v, todo.generator_id) for v in todo.versions]
    assert all(o.error is None for o in outcomes)
    assert sorted(o.reused for o in outcomes) == [False, False, False, True]
    rt = runtime(kb)
    with session_scope(rt.sessions) as s:
        adapters = [s.get(Adapter, o.adapter_id) for o in outcomes]
        assert len({a.store_uri for a in adapters}) == 3
        lineage = json.loads((rt.store.get_dir(adapters[0].store_uri) / "instill.json").read_text())
        version = adapters[0].document_version
        assert (
            lineage["text_sha256"] == version.text_sha256 and lineage["document"]["id"] == version.document_id
        )
        assert lineage["generator"]["fingerprint"] == adapters[0].generator.fingerprint
        assert "qa" not in lineage, "verdicts live in the catalog and the registry, not in the stored folder"


def test_generate_file_writes_one_adapter_folder(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    from tasks.settings import Settings

    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / "home"))
    doc = tmp_path / "note.md"
    doc.write_text(DOCS["alpha.md"])
    cfg = GeneratorConfig(name="cd", base_model=str(tiny_model_dir), options={"steps": 1})
    report = generate_file(Settings(), cfg, doc, tmp_path / "out")
    assert report["generator"] == "cd" and (tmp_path / "out" / "adapter_model.safetensors").is_file()
