"""The refresh's `gate` step: run the QA gates on a new adapter and record every metric and the verdict.

The gates themselves live in ``tasks.qa``; this step gathers what they need from the catalog and the
store (the document's text and probes, another document's probes for specificity, the adapter being
replaced for regression), then writes the verdict to the catalog: ``passed`` or ``failed`` with its
reasons. The stored adapter folder is never written to (registration puts the verdict on the registry
version). A failed adapter is kept on record and registered without an alias, so the previous production
adapter stays live.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tasks.catalog import queries
from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter, QAResult
from tasks.catalog.types import AdapterState
from tasks.faults import fault_point
from tasks.outcomes import GateOutcome
from tasks.runtime import Runtime, runtime
from tasks.settings import DocumentKind, LocalSourceConfig

log = logging.getLogger(__name__)


def gate(config: str, adapter_id: int, flow_run_id: str | None = None) -> GateOutcome:
    """Run the configured gates on one adapter and record the metrics and verdict in the catalog."""
    from hypernet.adapter import load_adapter
    from tasks.qa import PreviousAdapter, QAFileError, auto_probes, load_probes, run_gates

    rt = runtime(config)
    cfg = rt.kb.gates
    with session_scope(rt.sessions) as session:
        adapter = session.get(Adapter, adapter_id)
        version = adapter.document_version
        doc = version.document
        text = rt.store.get_bytes(version.text_uri).decode("utf-8")
        kind, folder, document = adapter.kind, rt.store.get_dir(adapter.store_uri), doc.label
        if kind is DocumentKind.KNOWLEDGE:
            qa_file = _qa_file(rt, doc.source.name, version.path)
            other = queries.other_document_version(session, doc)
            other_text = rt.store.get_bytes(other.text_uri).decode("utf-8") if other else None
            previous = _previous(session, rt, doc.id, adapter.id)
    if kind is DocumentKind.INSTRUCTION:  # after the read transaction: SQLite holds one writer at a time
        return _instruction_gate(rt, adapter_id, document, text, folder)
    weights = load_adapter(folder)
    base = rt.generator().base
    try:
        probes = load_probes(text, qa_file, cfg)
    except QAFileError as exc:  # the user's probe file is bad input: the adapter cannot be judged
        return _record_verdict(rt, adapter_id, document, None, (str(exc),))
    other_probes = auto_probes(other_text, cfg) if other_text else None
    prev = PreviousAdapter(load_adapter(previous[0]), previous[1]) if previous else None
    report = run_gates(base, weights, text, probes, cfg, other_probes=other_probes, previous=prev)
    return _record_verdict(rt, adapter_id, document, report, tuple(report.failures()))


def _instruction_gate(rt: Runtime, adapter_id: int, document: str, text: str, folder: Path) -> GateOutcome:
    """An instruction adapter's gate (``tasks.instruction``): preservation and compliance or effect."""
    import time

    from hypernet.adapter import load_adapter
    from tasks.instruction import InstructionGateConfig, instruction_gate, verdict_rows

    settings = rt.kb.instructions.gate
    cfg = InstructionGateConfig(**settings.model_dump())
    started = time.perf_counter()
    gen = rt.generator(DocumentKind.INSTRUCTION)
    verdict = instruction_gate(gen.base, load_adapter(folder), text, cfg)
    report = InstructionReport(
        verdict_rows(verdict, cfg, rt.kb.gates.suite_version), time.perf_counter() - started
    )
    return _record_verdict(rt, adapter_id, document, report, tuple(verdict["failures"]))


@dataclass(frozen=True)
class InstructionReport:
    """The instruction gate's metric rows, shaped like ``tasks.qa``'s report for ``_record_verdict``."""

    metric_rows: list[dict]
    seconds: float

    def rows(self) -> list[dict]:
        return self.metric_rows


def _record_verdict(
    rt: Runtime, adapter_id: int, document: str, report, failures: tuple[str, ...]
) -> GateOutcome:
    """One transaction: every metric row and the adapter's new state."""
    fault_point("gate")
    with session_scope(rt.sessions) as session:
        adapter = session.get(Adapter, adapter_id)
        for row in report.rows() if report else []:
            session.add(QAResult(adapter_id=adapter_id, **row))
        adapter.state = AdapterState.FAILED if failures else AdapterState.PASSED
        adapter.error = "; ".join(failures) or None
    if failures:
        log.warning("%s: adapter failed its gates: %s", document, "; ".join(failures))
    return GateOutcome(adapter_id, document, not failures, failures, report.seconds if report else 0.0)


def _qa_file(rt: Runtime, source_name: str, path: str) -> Path | None:
    """``NAME.qa.yaml`` beside a local document, when there is one (other sources: not yet read)."""
    from tasks.qa import qa_path_for

    cfg = rt.source_config(source_name)
    if not isinstance(cfg, LocalSourceConfig):
        return None
    candidate = qa_path_for(cfg.path / path)
    return candidate if candidate.is_file() else None


def _previous(session, rt: Runtime, document_id: int, adapter_id: int) -> tuple[Path, str] | None:
    """The production adapter this one would replace: its folder and the text it was made from."""
    live = [
        a
        for a in queries.document_adapters(session, document_id, (AdapterState.PRODUCTION,))
        if a.id != adapter_id
    ]
    if not live:
        return None
    prev = live[-1]
    text = rt.store.get_bytes(prev.document_version.text_uri).decode("utf-8")
    return rt.store.get_dir(prev.store_uri), text
