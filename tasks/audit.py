"""Audit: from an adapter back to the exact document revision that produced it, and everything since.

Plain dicts out, so the CLI can print a table or JSON from the same answer.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from tasks.aliases import PRODUCTION, model_name
from tasks.catalog import queries
from tasks.catalog.models import Adapter
from tasks.lifecycle import LifecycleError, resolve_document
from tasks.runtime import runtime


def _ts(value) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _events(session: Session, model: str, version: str | None = None) -> list[dict]:
    return [
        {
            "alias": e.alias,
            "from_version": e.from_version,
            "to_version": e.to_version,
            "actor": e.actor,
            "reason": e.reason,
            "time": _ts(e.created_at),
            "flow_run_id": e.flow_run_id,
        }
        for e in queries.alias_events(session, model, version=version)
    ]


def adapter_record(session: Session, adapter: Adapter) -> dict:
    version, generator = adapter.document_version, adapter.generator
    doc = version.document
    return {
        "model": adapter.registered_model,
        "version": adapter.model_version,
        "kind": adapter.kind.value,  # knowledge | instruction (Text-to-LoRA, instruction gate)
        "state": adapter.state.value,
        "adapter_sha256": adapter.adapter_sha256,
        # Share of the document the generator saw (below 1.0: cut to its window; None: made before 0003).
        "covered_fraction": adapter.covered_fraction,
        "store_uri": adapter.store_uri,
        "rank": adapter.rank,
        "targets": adapter.targets,
        "document": {
            "source": doc.source.name,
            "source_kind": doc.source.kind,
            "key": doc.external_key,
            "path": version.path,
            "current_path": doc.current_path,
            "title": doc.title,
        },
        "source_revision": version.source_revision,
        "change_kind": version.change_kind,
        "raw_sha256": version.raw_sha256,
        "text_sha256": version.text_sha256,
        "parser": version.parser,
        "parser_version": version.parser_version,
        "generator": {
            "kind": generator.kind,
            "fingerprint": generator.fingerprint,
            "checkpoint_sha256": generator.checkpoint_sha256,
        },
        "base_model": {
            "id": generator.base_model_id,
            "revision": generator.base_model_revision,
            "weights_sha256": generator.base_model_sha256,
        },
        "qa": [
            {
                "suite": q.suite,
                "suite_version": q.suite_version,
                "metric": q.metric,
                "value": q.value,
                "threshold": q.threshold,
                "passed": q.passed,
            }
            for q in adapter.qa_results
        ],
        "flow_run_id": adapter.flow_run_id,
        "mlflow_run_id": adapter.mlflow_run_id,
        "created_at": _ts(adapter.created_at),
        "alias_events": _events(session, adapter.registered_model, adapter.model_version)
        if adapter.registered_model
        else [],
    }


def audit_adapter(config: str, ref: str) -> dict:
    """``ref`` is ``NAME@VERSION`` or ``NAME@ALIAS``."""
    rt = runtime(config)
    if "@" not in ref:
        raise LifecycleError(f"{ref!r}: expected NAME@VERSION or NAME@ALIAS")
    model, at = ref.rsplit("@", 1)
    version = at if at.isdigit() else rt.registry.alias(model, at)
    if version is None:
        raise LifecycleError(f"{model} has no alias {at!r}")
    with rt.sessions() as session:
        adapter = queries.adapter_registered_as(session, model, version)
        if adapter is None:
            raise LifecycleError(f"no adapter registered as {model} version {version}")
        return adapter_record(session, adapter)


def audit_document(config: str, ref: str) -> dict:
    rt = runtime(config)
    with rt.sessions() as session:
        doc = resolve_document(session, rt, ref)
        model = model_name(rt.kb.name, doc.source.name, doc.id)
        return {
            "document": doc.label,
            "key": doc.external_key,
            "title": doc.title,
            "state": doc.state.value,
            "model": model,
            "production": rt.registry.alias(model, PRODUCTION),
            "versions": [
                {
                    "source_revision": v.source_revision,
                    "change_kind": v.change_kind,
                    "kind": v.kind.value,
                    "path": v.path,
                    "raw_sha256": v.raw_sha256,
                    "text_sha256": v.text_sha256,
                    "error": v.error,
                    "time": _ts(v.created_at),
                    "adapters": [
                        {
                            "version": a.model_version,
                            "kind": a.kind.value,
                            "state": a.state.value,
                            "adapter_sha256": a.adapter_sha256,
                            "covered_fraction": a.covered_fraction,
                        }
                        for a in v.adapters
                    ],
                }
                for v in doc.versions
            ],
            "alias_events": _events(session, model),
        }


def status(config: str) -> list[dict]:
    """What is in production per live document."""
    rt = runtime(config)
    rows = []
    with rt.sessions() as session:
        for doc in queries.live_documents(session):
            model = model_name(rt.kb.name, doc.source.name, doc.id)
            prod = [a for v in doc.versions for a in v.adapters if a.state.value == PRODUCTION]
            last = doc.versions[-1] if doc.versions else None
            rows.append(
                {
                    "document": doc.label,
                    "kind": last.kind.value if last else None,
                    "state": doc.state.value,
                    "model": model,
                    "production": prod[-1].model_version if prod else None,
                    "adapter_sha256": prod[-1].adapter_sha256 if prod else None,
                    "last_error": last.error if last else None,
                }
            )
    return rows
