"""The refresh's `generate` step: turn a recorded document version into an adapter folder.

The key of an adapter is (text sha256, generator fingerprint): a version whose text some adapter of the
same generator already covers reuses that adapter's files instead of generating again. ``generate_file``
is the same work for one file outside any knowledge base (`instill generate`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tasks.catalog import queries
from tasks.catalog.db import session_scope
from tasks.catalog.models import Adapter, DocumentVersion, Generator
from tasks.catalog.types import AdapterState
from tasks.faults import fault_point
from tasks.outcomes import GenerateOutcome
from tasks.runtime import build_generator, runtime
from tasks.settings import (
    DEFAULT_BASE_MODEL,
    INSTRUCTION_GENERATOR,
    DocumentKind,
    GeneratorConfig,
    InstructionsConfig,
    Settings,
)

log = logging.getLogger(__name__)

# Hub ids written into adapter_config.json for the embedded aliases, so servers know the base model.
HUB_IDS = {DEFAULT_BASE_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct"}


# A generator reads at most a few thousand tokens (cd: 1,024; hypernet: max_chunks chunks); a longer text
# is cut here, before anything tokenises it, so a 20 MB document costs no more than a 200 kB one. What
# the generator saw is recorded as ``covered_fraction`` (catalog, instill.json, summary, audit).
MAX_GENERATOR_CHARS = 200_000
_TRUNCATED = (
    re.compile(r"truncated to its first (\d+) of (\d+) tokens"),
    re.compile(r"truncated to its first (\d+) chunks \(\d+ tokens\) of (\d+)"),
)


def covered_fraction(text_chars: int, given_chars: int, notes: list[str]) -> float:
    """Share of the document's text the generator saw: the cut here times the generator's own cut."""
    fraction = given_chars / text_chars if text_chars else 1.0
    for note in notes:
        for pattern in _TRUNCATED:
            m = pattern.search(note)
            if m:
                fraction *= int(m.group(1)) / max(int(m.group(2)), 1)
    return round(min(fraction, 1.0), 4)


def generate(
    config: str, version_id: int, generator_id: int, flow_run_id: str | None = None
) -> GenerateOutcome:
    """Generate (or reuse) the adapter for one document version and record it as a candidate.

    ``generator_id`` is the catalog row of the generator for the version's kind: the configured one for
    knowledge, Text-to-LoRA for an instruction (``Leftovers.instruction_generator_id``)."""
    rt = runtime(config)
    job = _prepare(rt, version_id, generator_id, flow_run_id)
    if isinstance(job, GenerateOutcome):
        return job
    gen = rt.generator(job.kind)
    log.info("generating an adapter for %s with %s", job.document, gen.name)
    try:
        result = gen.generate(job.given, progress=_progress_logger(job.document))
    except Exception as exc:  # one document's failure must not stop the others
        return _failed(job, exc)
    return _record(rt, job, generator_id, result, flow_run_id)


def batch_kind(config: str, version_ids: list[int]) -> DocumentKind:
    """The kind of a batch's versions (the refresh sends instructions and knowledge in separate batches),
    so a worker loads the generator the batch needs and no other."""
    rt = runtime(config)
    with session_scope(rt.sessions) as session:
        kinds = {session.get(DocumentVersion, v).kind for v in version_ids}
    return kinds.pop() if len(kinds) == 1 else DocumentKind.KNOWLEDGE


def generate_batch(
    config: str, version_ids: list[int], generator_id: int, flow_run_id: str | None = None
) -> list[GenerateOutcome]:
    """``generate`` for a batch of versions (a worker's flow run): one call of the generator's
    ``generate_many`` where it has one (the hypernetwork: one batched pass), else one by one. A text
    already in the batch is left to ``generate`` afterwards, which reuses the adapter made for it."""
    rt = runtime(config)
    outcomes: dict[int, GenerateOutcome] = {}
    jobs, later, texts = [], [], set()
    for version_id in version_ids:
        job = _prepare(rt, version_id, generator_id, flow_run_id)
        if isinstance(job, GenerateOutcome):
            outcomes[version_id] = job
        elif job.text_sha256 in texts:
            later.append(version_id)
        else:
            texts.add(job.text_sha256)
            jobs.append(job)
    kinds = {job.kind for job in jobs}  # a batch holds one kind (one generator id); else one by one
    gen = rt.generator(next(iter(kinds))) if len(kinds) == 1 else None
    many = getattr(gen, "generate_many", None)
    results = None
    if many is not None and len(jobs) > 1:
        try:
            results = many([job.given for job in jobs])
        except Exception as exc:  # noqa: BLE001 - one bad document must not fail the batch: one by one
            log.warning("batched generation failed (%s); generating one by one", exc)
    for i, job in enumerate(jobs):
        if results is not None:
            outcomes[job.version_id] = _record(rt, job, generator_id, results[i], flow_run_id)
        else:
            outcomes[job.version_id] = generate(config, job.version_id, generator_id, flow_run_id)
    for version_id in later:
        outcomes[version_id] = generate(config, version_id, generator_id, flow_run_id)
    return [outcomes[v] for v in version_ids]


@dataclass(frozen=True)
class _Job:
    """A version that needs generating: its text (cut to what a generator reads) and its lineage."""

    version_id: int
    document: str
    text_sha256: str
    text_chars: int
    given: str
    lineage: dict
    kind: DocumentKind = DocumentKind.KNOWLEDGE


def _prepare(rt, version_id: int, generator_id: int, flow_run_id: str | None) -> _Job | GenerateOutcome:
    """The version's own adapter or a reused one (an outcome), else what generating it needs."""
    with session_scope(rt.sessions) as session:
        version = session.get(DocumentVersion, version_id)
        document = version.document.label
        own = queries.own_adapter(session, version_id, generator_id)
        if own is not None:  # a concurrent or crashed run already made it
            return GenerateOutcome(version_id, own.id, document, reused=True)
        same_text = queries.adapter_for_text(session, version.text_sha256, generator_id)
        if same_text is not None:
            adapter = _adapter_row(version_id, generator_id, same_text, flow_run_id, version.kind)
            adapter.covered_fraction = same_text.covered_fraction
            session.add(adapter)
            session.flush()
            return GenerateOutcome(
                version_id, adapter.id, document, reused=True, covered_fraction=adapter.covered_fraction
            )
        lineage = _catalog_lineage(version, session.get(Generator, generator_id))
        text_uri, text_sha, kind = version.text_uri, version.text_sha256, version.kind
    text = rt.store.get_bytes(text_uri).decode("utf-8")
    return _Job(version_id, document, text_sha, len(text), text[:MAX_GENERATOR_CHARS], lineage, kind)


def _failed(job: _Job, exc: Exception) -> GenerateOutcome:
    log.error("%s: generation failed: %s", job.document, exc)
    return GenerateOutcome(job.version_id, None, job.document, error=f"generation failed: {exc}")


def _record(rt, job: _Job, generator_id: int, result, flow_run_id: str | None) -> GenerateOutcome:
    """Store the generated adapter's folder, then its catalog row (unless another run recorded one)."""
    version_id, document = job.version_id, job.document
    covered = covered_fraction(job.text_chars, len(job.given), list(result.notes))
    if covered < 1.0:
        log.warning("%s: only %.1f%% of the document is covered by its adapter", document, 100 * covered)
    lineage = job.lineage | {"coverage": {"covered_fraction": covered, "notes": list(result.notes)}}
    with tempfile.TemporaryDirectory(dir=rt.store.root) as tmp:
        folder = Path(tmp) / "adapter"
        sha = _save(result, rt.generator(job.kind), folder, lineage)
        uri = rt.store.put_dir(folder, "adapters", sha)
    fault_point("generate")
    with session_scope(rt.sessions) as session:
        # Re-checked inside the write transaction: a concurrent run may have recorded one meanwhile.
        own = queries.own_adapter(session, version_id, generator_id)
        if own is not None:
            return GenerateOutcome(
                version_id, own.id, document, reused=True, covered_fraction=own.covered_fraction
            )
        stored = StoredAdapter(sha, uri, result.weights.rank, list(result.weights.target_names))
        adapter = _adapter_row(version_id, generator_id, stored, flow_run_id, job.kind)
        adapter.covered_fraction = covered
        session.add(adapter)
        session.flush()
        return GenerateOutcome(
            version_id, adapter.id, document, seconds=result.seconds, covered_fraction=covered
        )


@dataclass(frozen=True)
class StoredAdapter:
    """An adapter folder in the store: what an ``adapters`` row says about its files."""

    adapter_sha256: str
    store_uri: str
    rank: int
    targets: list[str]


def _adapter_row(
    version_id: int,
    generator_id: int,
    files: StoredAdapter | Adapter,
    flow_run_id: str | None,
    kind: DocumentKind,
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
        kind=kind,
    )


def _save(result, gen, folder: Path, lineage: dict) -> str:
    """Write the adapter folder (PEFT layout + ``instill.json``); returns its sha256."""
    from hypernet.adapter import save_adapter

    base_id = gen.describe()["base_model_id"]
    lineage = lineage | {"generation": result.metrics}
    return save_adapter(result.weights, folder, HUB_IDS.get(base_id, base_id), lineage)


def _lineage(
    document: dict,
    hashes: dict,
    generator: dict,
    base_model: dict,
    kind: DocumentKind = DocumentKind.KNOWLEDGE,
) -> dict:
    """The ``instill.json`` sidecar: where the adapter came from. QA verdicts are not in it: they live
    in the catalog and on the registry version, as a stored folder is never written again."""
    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "kind": kind.value,
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
        version.kind,
    )


def _progress_logger(document: str):
    def progress(step: int, loss: float) -> None:
        if step % 10 == 0:
            log.info("%s: step %d, loss %.4f", document, step, loss)

    return progress


def generate_file(
    settings: Settings,
    cfg: GeneratorConfig,
    doc_file: Path,
    out_dir: Path,
    instructions: InstructionsConfig | None = None,
) -> dict:
    """`instill generate`: one file straight to an adapter folder, outside any knowledge base.

    A document whose front matter declares ``instill: {kind: instruction}`` gets a Text-to-LoRA adapter
    of its body (``tasks.instruction``) and that adapter's own gate, whatever generator is configured:
    ``instructions`` (the knowledge base's section, when there is one) gives its options and thresholds.
    """
    from tasks.instruction import instruction_text
    from tasks.parse import parse_document

    data = doc_file.read_bytes()
    instruction = instruction_text(data, doc_file.name)
    if instruction is not None:
        how = instructions or InstructionsConfig()
        return _instruction_file(settings, cfg, how, doc_file, data, instruction, out_dir)
    parsed = parse_document(data, doc_file.name)
    gen = build_generator(settings, cfg)
    given = parsed.text[:MAX_GENERATOR_CHARS]
    result = gen.generate(given, progress=_progress_logger(doc_file.name))
    lineage = _file_lineage(
        doc_file, data, parsed.text_sha256, f"{parsed.parser} {parsed.parser_version}", gen
    )
    sha = _save(result, gen, out_dir, lineage)
    return {"generator": gen.name, "seconds": result.seconds, "adapter_sha256": sha}


def _instruction_file(
    settings: Settings,
    cfg: GeneratorConfig,
    how: InstructionsConfig,
    doc_file: Path,
    data: bytes,
    text: str,
    out_dir: Path,
) -> dict:
    """An instruction document: the ``t2l`` generator on its body, then the instruction gate."""
    from tasks.instruction import InstructionGateConfig, instruction_gate

    t2l = how.generator(cfg.base_model)
    if not t2l.options and cfg.name == INSTRUCTION_GENERATOR:  # a configured t2l keeps its checkpoint
        t2l = cfg
    gen = build_generator(settings, t2l)
    result = gen.generate(text)
    verdict = instruction_gate(gen.base, result.weights, text, InstructionGateConfig(**how.gate.model_dump()))
    text_sha = hashlib.sha256(text.encode()).hexdigest()
    lineage = _file_lineage(doc_file, data, text_sha, "front-matter instruction", gen)
    lineage |= {"kind": DocumentKind.INSTRUCTION.value, "instruction": text, "qa": verdict}
    sha = _save(result, gen, out_dir, lineage)
    return {"generator": gen.name, "seconds": result.seconds, "adapter_sha256": sha, "qa": verdict}


def _file_lineage(doc_file: Path, data: bytes, text_sha256: str, parser: str, gen) -> dict:
    info = gen.describe()
    return _lineage(
        {"path": str(doc_file.resolve())},
        {"raw_sha256": hashlib.sha256(data).hexdigest(), "text_sha256": text_sha256, "parser": parser},
        {
            "kind": gen.name,
            "fingerprint": gen.fingerprint(),
            "checkpoint_sha256": info.get("checkpoint_sha256"),
        },
        {"id": info["base_model_id"], "sha256": info["base_model_sha256"]},
    )
