"""Huge and long documents: a per-document size limit for every source, no silent truncation (the
covered fraction in the catalog, instill.json, the summary and the audit), and SIGTERM stops a refresh
within seconds, cleanly (the next refresh finishes the work)."""

from __future__ import annotations

import json
import signal
import time

import yaml

from tests.fixtures.kb import instill, refresh
from tests.flows.reliability import env_for, make_kb, run, start


def test_a_document_over_max_bytes_fails_alone_with_a_clear_reason(kb, tmp_path):
    body = yaml.safe_load(kb.read_text())
    body["sources"][0]["max_bytes"] = 4096
    kb.write_text(yaml.safe_dump(body))
    (kb.parent / "docs" / "huge.txt").write_text("All work and no play. " * 1000)
    from tasks.detect import detect
    from tasks.record import record

    plan = detect(str(kb), "docs")
    outcomes = {o.change.key: o for o in (record(str(kb), "docs", c) for c in plan.changes)}
    reason = "cannot fetch 'huge.txt': 22,000 bytes, over the source's max_bytes of 4,096"
    assert outcomes["huge.txt"].error == f"cannot fetch: source 'docs': {reason}"
    assert not outcomes["huge.txt"].transient
    assert all(o.error is None for k, o in outcomes.items() if k != "huge.txt")


def test_a_truncated_document_says_so_everywhere(prefect_server, kb, tmp_path):
    body = yaml.safe_load(kb.read_text())
    body["generator"]["options"]["max_doc_tokens"] = 64
    kb.write_text(yaml.safe_dump(body))
    sentences = [f"Station {i} on the long line has {i + 2} platforms and a red clock." for i in range(60)]
    (kb.parent / "docs" / "long.md").write_text("# Long line\n\n" + " ".join(sentences) + "\n")
    code, result, out = refresh(kb, tmp_path / "s.json")
    assert code == 0, out
    cut = {t["document"]: t["covered_fraction"] for t in result["truncated"]}
    assert list(cut) == ["docs:long.md"] and 0 < cut["docs:long.md"] < 0.5, cut
    assert "truncated docs:long.md: its adapter covers" in out
    from sqlalchemy import select

    from tasks.catalog.db import session_scope
    from tasks.catalog.models import Adapter
    from tasks.runtime import runtime

    with session_scope(runtime(kb).sessions) as s:
        adapter = s.scalars(select(Adapter).where(Adapter.covered_fraction < 1)).one()
        lineage = json.loads((runtime(kb).store.get_dir(adapter.store_uri) / "instill.json").read_text())
        assert adapter.covered_fraction == lineage["coverage"]["covered_fraction"] < 1
        label = adapter.document_version.document.label
    code, out = instill("audit", "doc", "--config", str(kb), label, "--json")
    assert code == 0 and json.loads(out)["versions"][0]["adapters"][0]["covered_fraction"] < 1
    code, out = instill("audit", "doc", "--config", str(kb), "docs:alpha.md", "--json")
    assert json.loads(out)["title"] == "Alpha", "a Markdown document's first heading is its title"


def test_sigterm_stops_a_refresh_within_seconds(prefect_server, tmp_path, tiny_model_dir):
    config = make_kb(tmp_path, tiny_model_dir)
    body = yaml.safe_load(config.read_text())
    body["generator"]["options"]["steps"] = 5000  # generation would run for minutes
    config.write_text(yaml.safe_dump(body))
    proc = start(config, env=env_for(tmp_path))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "generating an adapter" in line:
            break
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    proc.wait(timeout=30)
    assert time.monotonic() - t0 < 5, "SIGTERM must stop a refresh within seconds"
    assert proc.returncode != 0
    body["generator"]["options"]["steps"] = 2
    config.write_text(yaml.safe_dump(body))
    code, out = run(config, env=env_for(tmp_path))
    assert code == 0 and "as crashed" in out, out
