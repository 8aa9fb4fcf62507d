"""The refresh's `sweep` step: what the catalog says is left to do for a source, for the configured generator.

Work is read from the catalog, not only from this run's changes, so a crashed run's leftovers (versions
never generated, adapters never gated or registered, deleted documents never retired) are finished by the
next run. The sweep also loads the configured generator and makes sure it has its ``generators`` row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.catalog import queries
from tasks.catalog.db import session_scope
from tasks.catalog.models import Generator
from tasks.faults import fault_point
from tasks.runtime import Runtime, runtime
from tasks.settings import DocumentKind


@dataclass(frozen=True)
class Leftovers:
    generator_id: int
    versions: list[int] = field(default_factory=list)  # parsed versions no adapter of the generator covers
    ungated: list[int] = field(default_factory=list)  # adapters with no QA verdict yet
    unregistered: list[int] = field(default_factory=list)  # adapters with no registry version yet
    deleted: list[int] = field(default_factory=list)  # deleted documents whose adapters are not retired
    # Instruction documents' versions with no adapter of the Text-to-LoRA generator (its row's id).
    instructions: list[int] = field(default_factory=list)
    instruction_generator_id: int | None = None


def sweep(config: str, source_name: str) -> Leftovers:
    """Everything the catalog holds undone for ``source_name``, before this run generates anything."""
    rt = runtime(config)
    generator_id = generator_row(rt)
    fault_point("sweep")
    with session_scope(rt.sessions) as session:
        source = queries.source_by_name(session, source_name)
        if source is None:
            return Leftovers(generator_id)
        # The instruction generator's row only when the source has instructions: no model load otherwise.
        has_instructions = queries.has_instructions(session, source.id)
    instruction_id = generator_row(rt, DocumentKind.INSTRUCTION) if has_instructions else None
    with session_scope(rt.sessions) as session:
        return Leftovers(
            generator_id,
            versions=queries.pending_versions(session, source.id, generator_id),
            ungated=queries.ungated_adapters(session, source.id),
            unregistered=queries.unregistered_adapters(session, source.id),
            deleted=queries.documents_to_retire(session, source.id),
            instructions=queries.pending_versions(
                session, source.id, instruction_id, DocumentKind.INSTRUCTION
            )
            if instruction_id is not None
            else [],
            instruction_generator_id=instruction_id,
        )


def generator_row(rt: Runtime, kind: DocumentKind = DocumentKind.KNOWLEDGE) -> int:
    """The catalog's ``generators`` row for the generator of ``kind`` documents (created on first use).

    The base model is loaded only when this home has not fingerprinted that generator yet
    (``Runtime.known_fingerprint``): a refresh with nothing to generate never loads it."""
    known = rt.known_fingerprint(kind)
    if known is not None:
        with session_scope(rt.sessions) as session:
            row = queries.generator_by_fingerprint(session, known)
            if row is not None:
                return row.id
    gen = rt.generator(kind)  # loads the base model once per process
    fingerprint = gen.fingerprint()
    rt.remember_fingerprint(fingerprint, kind)
    with session_scope(rt.sessions) as session:
        row = queries.generator_by_fingerprint(session, fingerprint)
        if row is None:
            info = gen.describe()
            row = Generator(
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
