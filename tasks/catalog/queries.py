"""Every query the pipeline and the operations ask of the catalog; writes stay with the steps."""

from __future__ import annotations

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session, joinedload

from tasks.catalog.models import Adapter, AliasEvent, Document, DocumentVersion, Generator, Source
from tasks.catalog.types import AdapterState, DocumentState
from tasks.settings import DocumentKind
from tasks.sources.base import KnownDocument

LIVE_DOCUMENT_STATES = (DocumentState.ACTIVE, DocumentState.FAILED)


def source_by_name(session: Session, name: str) -> Source | None:
    return session.scalar(select(Source).where(Source.name == name))


def generator_by_fingerprint(session: Session, fingerprint: str) -> Generator | None:
    return session.scalar(select(Generator).where(Generator.fingerprint == fingerprint))


def latest_version(session: Session, document_id: int) -> DocumentVersion | None:
    return session.scalar(
        select(DocumentVersion)
        .where(DocumentVersion.document_id == document_id)
        .order_by(DocumentVersion.id.desc())
        .limit(1)
    )


def _latest_version_ids(source_id: int):
    return (
        select(func.max(DocumentVersion.id).label("version_id"))
        .join(Document, Document.id == DocumentVersion.document_id)
        .where(Document.source_id == source_id, Document.state.in_(LIVE_DOCUMENT_STATES))
        .group_by(DocumentVersion.document_id)
        .subquery()
    )


def known_documents(session: Session, source_id: int) -> dict[str, KnownDocument]:
    """The live documents of a source keyed by current path, with their latest recorded revision."""
    latest = _latest_version_ids(source_id)
    rows = session.execute(
        select(Document.current_path, DocumentVersion.source_revision, DocumentVersion.raw_sha256)
        .join(DocumentVersion, DocumentVersion.document_id == Document.id)
        .join(latest, latest.c.version_id == DocumentVersion.id)
    )
    return {path: KnownDocument(path, revision, raw) for path, revision, raw in rows}


def document_at(session: Session, source_id: int, path: str) -> Document | None:
    """The document currently at ``path``: a live one first, else the most recently deleted one."""
    docs = session.scalars(
        select(Document)
        .where(Document.source_id == source_id, Document.current_path == path)
        .order_by(Document.id.desc())
    ).all()
    live = [d for d in docs if d.state in LIVE_DOCUMENT_STATES]
    return (live or docs or [None])[0]


def document_by_key(session: Session, source_id: int, key: str) -> Document | None:
    """The document whose stable external key is ``key`` (its first path, object key or page id)."""
    return session.scalar(
        select(Document).where(Document.source_id == source_id, Document.external_key == key)
    )


def lock_document(session: Session, document_id: int) -> Document:
    """The document's row, locked until the transaction ends (``FOR UPDATE``; a no-op on SQLite, whose
    ``BEGIN IMMEDIATE`` already holds the write lock)."""
    return session.scalar(select(Document).where(Document.id == document_id).with_for_update())


def live_documents(session: Session) -> list[Document]:
    """Every document not deleted, of every source, oldest first."""
    return list(
        session.scalars(select(Document).where(Document.state != DocumentState.DELETED).order_by(Document.id))
    )


def other_document_version(session: Session, document: Document) -> DocumentVersion | None:
    """The newest parsed version of another live document with other text (the specificity gate's foil)."""
    return session.scalar(
        select(DocumentVersion)
        .join(Document, Document.id == DocumentVersion.document_id)
        .where(
            Document.id != document.id,
            Document.state == DocumentState.ACTIVE,
            DocumentVersion.text_uri.is_not(None),
            DocumentVersion.text_sha256 != document.versions[-1].text_sha256,
        )
        .order_by(DocumentVersion.id.desc())
        .limit(1)
    )


def adapter_for_text(session: Session, text_sha256: str, generator_id: int) -> Adapter | None:
    """An adapter already generated from exactly this text by exactly this generator (any document)."""
    return session.scalar(
        select(Adapter)
        .join(DocumentVersion, DocumentVersion.id == Adapter.document_version_id)
        .where(
            DocumentVersion.text_sha256 == text_sha256,
            Adapter.generator_id == generator_id,
            Adapter.state != AdapterState.FAILED,
        )
        .order_by(Adapter.id)
        .limit(1)
    )


def own_adapter(session: Session, version_id: int, generator_id: int) -> Adapter | None:
    """A live adapter this generator already made for exactly this version."""
    return session.scalars(
        select(Adapter).where(
            Adapter.document_version_id == version_id,
            Adapter.generator_id == generator_id,
            Adapter.state != AdapterState.RETIRED,
        )
    ).first()


def pending_versions(
    session: Session, source_id: int, generator_id: int, kind: DocumentKind = DocumentKind.KNOWLEDGE
) -> list[int]:
    """Latest parsed versions of ``kind`` of live documents with no adapter for their text under this
    generator (each kind has its own generator: tasks.runtime.Runtime.generator_config).

    Computed from the catalog rather than from this run's changes, so work that a crashed run left
    undone is picked up by the next one.
    """
    # Two linear queries joined in Python: SQLite evaluates the correlated form once per version, which
    # made a no-op refresh of 10,000 documents take a minute.
    latest = _latest_version_ids(source_id)
    candidates = session.execute(
        select(DocumentVersion.id, DocumentVersion.document_id, DocumentVersion.text_sha256)
        .join(latest, latest.c.version_id == DocumentVersion.id)
        .where(DocumentVersion.text_sha256.is_not(None), DocumentVersion.kind == kind)
        .order_by(DocumentVersion.id)
    ).all()
    covered = set(
        session.execute(
            select(DocumentVersion.document_id, DocumentVersion.text_sha256)
            .join(Adapter, Adapter.document_version_id == DocumentVersion.id)
            .join(Document, Document.id == DocumentVersion.document_id)
            .where(
                Document.source_id == source_id,
                Adapter.generator_id == generator_id,
                # A retired adapter does not cover the text (a restored or reverted document needs its
                # adapter back); a failed one does: the same text and generator would fail the same gates.
                Adapter.state != AdapterState.RETIRED,
            )
        ).all()
    )
    return [vid for vid, doc_id, text in candidates if (doc_id, text) not in covered]


def has_instructions(session: Session, source_id: int) -> bool:
    """Whether any live document of the source is an instruction at its latest parsed version."""
    latest = _latest_version_ids(source_id)
    found = session.execute(
        select(DocumentVersion.id)
        .join(latest, latest.c.version_id == DocumentVersion.id)
        .where(DocumentVersion.kind == DocumentKind.INSTRUCTION, DocumentVersion.text_sha256.is_not(None))
        .limit(1)
    ).first()
    return found is not None


def document_adapters_of_source(
    session: Session, source_id: int, states: tuple[AdapterState, ...]
) -> list[Adapter]:
    """Adapters in ``states`` of the live documents of a source, oldest first."""
    return list(
        session.scalars(
            select(Adapter)
            .join(DocumentVersion, DocumentVersion.id == Adapter.document_version_id)
            .join(Document, Document.id == DocumentVersion.document_id)
            .where(
                Document.source_id == source_id,
                Document.state.in_(LIVE_DOCUMENT_STATES),
                Adapter.state.in_(states),
            )
            .order_by(Adapter.id)
        )
    )


def ungated_adapters(session: Session, source_id: int) -> list[int]:
    """New adapters of the live documents of a source that have no QA verdict yet."""
    return [
        a.id
        for a in document_adapters_of_source(session, source_id, (AdapterState.CANDIDATE,))
        if a.model_version is None and not a.qa_results
    ]


def unregistered_adapters(session: Session, source_id: int) -> list[int]:
    return list(
        session.scalars(
            select(Adapter.id)
            .join(DocumentVersion, DocumentVersion.id == Adapter.document_version_id)
            .join(Document, Document.id == DocumentVersion.document_id)
            .where(
                Document.source_id == source_id,
                Document.state.in_(LIVE_DOCUMENT_STATES),
                Adapter.model_version.is_(None),
                # Failed adapters are registered too (their run holds the metrics), but get no alias.
                Adapter.state.in_((AdapterState.CANDIDATE, AdapterState.PASSED, AdapterState.FAILED)),
            )
            .order_by(Adapter.id)
        )
    )


def documents_to_retire(session: Session, source_id: int) -> list[int]:
    """Deleted documents that still have an adapter not yet retired."""
    return list(
        session.scalars(
            select(Document.id)
            .where(Document.source_id == source_id, Document.state == DocumentState.DELETED)
            .where(
                exists(
                    select(Adapter.id)
                    .join(DocumentVersion, DocumentVersion.id == Adapter.document_version_id)
                    .where(
                        DocumentVersion.document_id == Document.id,
                        Adapter.state != AdapterState.RETIRED,
                        Adapter.state != AdapterState.FAILED,
                    )
                )
            )
            .order_by(Document.id)
        )
    )


def document_adapters(session: Session, document_id: int, states: tuple[AdapterState, ...]) -> list[Adapter]:
    return list(
        session.scalars(
            select(Adapter)
            .join(DocumentVersion, DocumentVersion.id == Adapter.document_version_id)
            .where(DocumentVersion.document_id == document_id, Adapter.state.in_(states))
            .order_by(Adapter.id)
        )
    )


def last_alias_target(session: Session, model: str, alias: str) -> str | None:
    """Where the catalog last recorded ``alias`` pointing (None: unset or removed)."""
    event = session.scalar(
        select(AliasEvent)
        .where(and_(AliasEvent.registered_model == model, AliasEvent.alias == alias))
        .order_by(AliasEvent.id.desc())
        .limit(1)
    )
    return event.to_version if event else None


def alias_events(
    session: Session, model: str, *, alias: str | None = None, version: str | None = None
) -> list[AliasEvent]:
    """The alias moves of ``model``, oldest first; only ``alias``'s, or only those to or from ``version``."""
    query = select(AliasEvent).where(AliasEvent.registered_model == model)
    if alias is not None:
        query = query.where(AliasEvent.alias == alias)
    if version is not None:
        query = query.where(or_(AliasEvent.to_version == version, AliasEvent.from_version == version))
    return list(session.scalars(query.order_by(AliasEvent.id)))


def adapter_registered_as(
    session: Session, model: str, version: str, *, newest: bool = True
) -> Adapter | None:
    """The adapter registered as ``model`` version ``version``; reuse can give several rows one version
    (a reverted document), hence the choice of the newest or the oldest."""
    return session.scalar(
        select(Adapter)
        .where(Adapter.registered_model == model, Adapter.model_version == str(version))
        .order_by(Adapter.id.desc() if newest else Adapter.id)
        .limit(1)
    )


def production_adapters(session: Session) -> list[Adapter]:
    """Every adapter in production, by registered model name."""
    return list(
        session.scalars(
            select(Adapter)
            .where(Adapter.state == AdapterState.PRODUCTION)
            .order_by(Adapter.registered_model, Adapter.id)
            .options(
                joinedload(Adapter.document_version)
                .joinedload(DocumentVersion.document)
                .joinedload(Document.source)
            )
        )
    )
