"""The refresh's `generate` step: turn a recorded document version into an adapter folder.

The key of an adapter is (text sha256, generator fingerprint): a version whose text some adapter of the
same generator already covers reuses that adapter's files instead of generating again. ``generate_file``
is the same work for one file outside any knowledge base (`instill generate`).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tasks.catalog import queries
from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter, DocumentVersion, Generator
from tasks.catalog.types import AdapterState
from tasks.runtime import build_generator, runtime
from tasks.settings import DEFAULT_BASE_MODEL, GeneratorConfig, Settings

log = logging.getLogger(__name__)

# Hub ids written into adapter_config.json for the embedded aliases, so servers know the base model.
HUB_IDS = {DEFAULT_BASE_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct"}


@dataclass(frozen=True)
class GenerateOutcome:
    version_id: int
    adapter_id: int | None  # None when generation failed
    document: str
    seconds: float = 0.0
    reused: bool = False
    error: str | None = None


def generate(
    config: str, version_id: int, generator_id: int, flow_run_id: str | None = None
) -> GenerateOutcome:
    """Generate (or reuse) the adapter for one document version and record it as a candidate."""
    rt = runtime(config)
    with session_scope(rt.sessions) as session:
        version = session.get(DocumentVersion, version_id)
        document = version.document.label
        same_text = queries.adapter_for_text(session, version.text_sha256, generator_id)
        if same_text is not None:
            adapter = _adapter_row(version_id, generator_id, same_text, flow_run_id)
            session.add(adapter)
            session.flush()
            return GenerateOutcome(version_id, adapter.id, document, reused=True)
        lineage = _catalog_lineage(version, session.get(Generator, generator_id))
        text_uri = version.text_uri
    text = rt.store.get_bytes(text_uri).decode("utf-8")
    gen = rt.generator()
    log.info("generating an adapter for %s with %s", document, gen.name)
    try:
        result = gen.generate(text, progress=_progress_logger(document))
    except Exception as exc:  # one document's failure must not stop the others
        log.error("%s: generation failed: %s", document, exc)
        return GenerateOutcome(version_id, None, document, error=f"generation failed: {exc}")
    with tempfile.TemporaryDirectory(dir=rt.store.root) as tmp:
        folder = Path(tmp) / "adapter"
        sha = _save(result, gen, folder, lineage)
        uri = rt.store.put_dir(folder, "adapters", sha)
    with session_scope(rt.sessions) as session:
        stored = StoredAdapter(sha, uri, result.weights.rank, list(result.weights.target_names))
        adapter = _adapter_row(version_id, generator_id, stored, flow_run_id)
        session.add(adapter)
        session.flush()
        return GenerateOutcome(version_id, adapter.id, document, seconds=result.seconds)


@dataclass(frozen=True)
class StoredAdapter:
    """An adapter folder in the store: what an ``adapters`` row says about its files."""

    adapter_sha256: str
    store_uri: str
    rank: int
    targets: list[str]


def _adapter_row(
    version_id: int, generator_id: int, files: StoredAdapter | Adapter, flow_run_id: str | None
) -> Adapter:
    """A new candidate row for ``version_id`` holding ``files`` (a new folder, or a reused adapter's)."""
    return Adapter(
        document_version_id=version_id,
        generator_id=generator_id,
        adapter_sha256=files.adapter_sha256,
        store_uri=files.store_uri,
        rank=files.rank,
        targets=list(files.targets),
        state=AdapterState.CANDIDATE,
        flow_run_id=flow_run_id,
    )


def _save(result, gen, folder: Path, lineage: dict) -> str:
    """Write the adapter folder (PEFT layout + ``instill.json``); returns its sha256."""
    from hypernet.adapter import save_adapter

    base_id = gen.describe()["base_model_id"]
    lineage = lineage | {"generation": result.metrics}
    return save_adapter(result.weights, folder, HUB_IDS.get(base_id, base_id), lineage)


def _lineage(document: dict, hashes: dict, generator: dict, base_model: dict) -> dict:
    """The ``instill.json`` sidecar: where the adapter came from. QA verdicts are not in it: they live
    in the catalog and on the registry version, as a stored folder is never written again."""
    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "document": document,
        **hashes,
        "generator": generator,
        "base_model": base_model,
        "created_at": created_at,
    }


def _catalog_lineage(version: DocumentVersion, generator: Generator) -> dict:
    doc = version.document
    return _lineage(
        {"id": doc.id, "source": doc.source.name, "key": doc.external_key, "path": version.path},
        {
            "source_revision": version.source_revision,
            "raw_sha256": version.raw_sha256,
            "text_sha256": version.text_sha256,
            "parser": f"{version.parser} {version.parser_version}",
        },
        {
            "kind": generator.kind,
            "fingerprint": generator.fingerprint,
            "checkpoint_sha256": generator.checkpoint_sha256,
        },
        {"id": generator.base_model_id, "sha256": generator.base_model_sha256},
    )


def _progress_logger(document: str):
    def progress(step: int, loss: float) -> None:
        if step % 10 == 0:
            log.info("%s: step %d, loss %.4f", document, step, loss)

    return progress


def generate_file(settings: Settings, cfg: GeneratorConfig, doc_file: Path, out_dir: Path) -> dict:
    """`instill generate`: one file straight to an adapter folder, outside any knowledge base."""
    from tasks.parse import parse_document

    data = doc_file.read_bytes()
    parsed = parse_document(data, doc_file.name)
    gen = build_generator(settings, cfg)
    info = gen.describe()
    result = gen.generate(parsed.text, progress=_progress_logger(doc_file.name))
    lineage = _lineage(
        {"path": str(doc_file.resolve())},
        {
            "raw_sha256": hashlib.sha256(data).hexdigest(),
            "text_sha256": parsed.text_sha256,
            "parser": f"{parsed.parser} {parsed.parser_version}",
        },
        {
            "kind": gen.name,
            "fingerprint": gen.fingerprint(),
            "checkpoint_sha256": info.get("checkpoint_sha256"),
        },
        {"id": info["base_model_id"], "sha256": info["base_model_sha256"]},
    )
    sha = _save(result, gen, out_dir, lineage)
    return {"generator": gen.name, "seconds": result.seconds, "adapter_sha256": sha}
