"""Turn recorded document versions into adapter folders with the configured generator.

The key of an adapter is (text sha256, generator fingerprint): a version whose text some adapter of the
same generator already covers reuses that adapter's files instead of generating again.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from tasks.catalog import queries
from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter, DocumentVersion, Hypernet
from tasks.catalog.types import AdapterState
from tasks.runtime import runtime
from tasks.settings import GeneratorConfig, Settings

log = logging.getLogger(__name__)

# Hub ids written into adapter_config.json for the embedded aliases, so servers know the base model.
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


@dataclass(frozen=True)
class GenerateOutcome:
    version_id: int
    adapter_id: int | None
    document: str
    seconds: float = 0.0
    reused: bool = False
    error: str | None = None


def build_generator(settings: Settings, cfg: GeneratorConfig):
    """Load the base model once and wrap it in the configured generator."""
    import torch

    from hypernet.base_model import load_base_model
    from hypernet.generators import make_generator

    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    base = load_base_model(cfg.base_model, settings.models_dir, device=settings.device)
    return make_generator(cfg.name, base, dict(cfg.options))


def ensure_generator_row(config: str) -> int:
    """The catalog's ``hypernets`` row for the configured generator (created on first use)."""
    rt = runtime(config)
    gen = rt.generator()
    fingerprint = gen.fingerprint()
    with session_scope(rt.sessions) as session:
        row = session.scalar(select(Hypernet).where(Hypernet.fingerprint == fingerprint))
        if row is None:
            info = gen.describe()
            row = Hypernet(
                name=f"{gen.name}:{fingerprint[:12]}",
                kind=gen.name,
                fingerprint=fingerprint,
                base_model_id=info["base_model_id"],
                base_model_revision=info.get("base_model_revision"),
                base_model_sha256=info["base_model_sha256"],
                checkpoint_sha256=info.get("checkpoint_sha256"),
                config=info.get("config", {}),
                metrics=info.get("metrics", {}),
            )
            session.add(row)
            session.flush()
        return row.id


def pending_versions(config: str, source_name: str, hypernet_id: int) -> list[int]:
    rt = runtime(config)
    with session_scope(rt.sessions) as session:
        source = queries.source_by_name(session, source_name)
        return queries.pending_versions(session, source.id, hypernet_id) if source else []


def generate_adapter(
    config: str, version_id: int, hypernet_id: int, flow_run_id: str | None = None
) -> GenerateOutcome:
    """Generate (or reuse) the adapter for one document version and record it as a candidate."""
    rt = runtime(config)
    with session_scope(rt.sessions) as session:
        version = session.get(DocumentVersion, version_id)
        document = f"{version.document.source.name}:{version.document.current_path}"
        same_text = queries.adapter_for_text(session, version.text_sha256, hypernet_id)
        if same_text is not None:
            adapter = _adapter_row(
                version_id,
                hypernet_id,
                same_text.adapter_sha256,
                same_text.store_uri,
                same_text.rank,
                same_text.targets,
                flow_run_id,
            )
            session.add(adapter)
            session.flush()
            return GenerateOutcome(version_id, adapter.id, document, reused=True)
        lineage = _lineage(version, session.get(Hypernet, hypernet_id))
        text_uri = version.text_uri
    text = rt.store.get_bytes(text_uri).decode("utf-8")
    gen = rt.generator()
    log.info("generating an adapter for %s with %s", document, gen.name)
    try:
        result = gen.generate(text, progress=_progress_logger(document))
    except Exception as exc:  # one document's failure must not stop the others
        log.error("%s: generation failed: %s", document, exc)
        return GenerateOutcome(version_id, None, document, error=f"generation failed: {exc}")
    uri, sha = _store_adapter(rt, result.weights, gen, lineage | {"generation": result.metrics})
    with session_scope(rt.sessions) as session:
        adapter = _adapter_row(
            version_id, hypernet_id, sha, uri, result.weights.rank, result.weights.target_names, flow_run_id
        )
        session.add(adapter)
        session.flush()
        return GenerateOutcome(version_id, adapter.id, document, seconds=result.seconds)


def _store_adapter(rt, weights, gen, lineage: dict) -> tuple[str, str]:
    from hypernet.adapter import save_adapter

    base_id = gen.describe()["base_model_id"]
    with tempfile.TemporaryDirectory(dir=rt.store.root) as tmp:
        folder = Path(tmp) / "adapter"
        sha = save_adapter(weights, folder, HUB_IDS.get(base_id, base_id), lineage)
        uri = rt.store.put_dir(folder, "adapters", sha)
    return uri, sha


def _adapter_row(version_id, hypernet_id, sha, uri, rank, targets, flow_run_id) -> Adapter:
    return Adapter(
        document_version_id=version_id,
        hypernet_id=hypernet_id,
        adapter_sha256=sha,
        store_uri=uri,
        rank=rank,
        targets=list(targets),
        state=AdapterState.CANDIDATE,
        flow_run_id=flow_run_id,
    )


def _lineage(version: DocumentVersion, hypernet: Hypernet) -> dict:
    doc = version.document
    return {
        "document": {"id": doc.id, "source": doc.source.name, "key": doc.external_key, "path": version.path},
        "source_revision": version.source_revision,
        "raw_sha256": version.raw_sha256,
        "text_sha256": version.text_sha256,
        "parser": f"{version.parser} {version.parser_version}",
        "generator": {
            "kind": hypernet.kind,
            "fingerprint": hypernet.fingerprint,
            "checkpoint_sha256": hypernet.checkpoint_sha256,
        },
        "base_model": {"id": hypernet.base_model_id, "sha256": hypernet.base_model_sha256},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "qa": None,
    }


def _progress_logger(document: str):
    def progress(step: int, loss: float) -> None:
        if step % 10 == 0:
            log.info("%s: step %d, loss %.4f", document, step, loss)

    return progress


def generate_file(settings: Settings, cfg: GeneratorConfig, doc_file: Path, out_dir: Path) -> dict:
    """`instill generate`: one file straight to an adapter folder, outside any knowledge base."""
    import hashlib

    from hypernet.adapter import save_adapter
    from tasks.parse import parse_document

    data = doc_file.read_bytes()
    parsed = parse_document(data, doc_file.name)
    gen = build_generator(settings, cfg)
    info = gen.describe()
    result = gen.generate(parsed.text, progress=_progress_logger(doc_file.name))
    lineage = {
        "document": {"path": str(doc_file.resolve())},
        "raw_sha256": hashlib.sha256(data).hexdigest(),
        "text_sha256": parsed.text_sha256,
        "parser": f"{parsed.parser} {parsed.parser_version}",
        "generator": {
            "kind": gen.name,
            "fingerprint": gen.fingerprint(),
            "checkpoint_sha256": info.get("checkpoint_sha256"),
        },
        "base_model": {"id": info["base_model_id"], "sha256": info["base_model_sha256"]},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "generation": result.metrics,
        "qa": None,
    }
    base_id = info["base_model_id"]
    sha = save_adapter(result.weights, out_dir, HUB_IDS.get(base_id, base_id), lineage)
    return {"generator": gen.name, "seconds": result.seconds, "adapter_sha256": sha}
