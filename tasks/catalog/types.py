"""Column types shared by the catalog tables: states as plain strings, UTC timestamps, sha256 digests."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from sqlalchemy import DateTime, Dialect, String, func
from sqlalchemy.orm import mapped_column
from sqlalchemy.types import TypeDecorator


class DocumentState(StrEnum):
    ACTIVE = "active"
    DELETED = "deleted"
    FAILED = "failed"


class AdapterState(StrEnum):
    CANDIDATE = "candidate"
    PASSED = "passed"
    FAILED = "failed"
    PRODUCTION = "production"
    RETIRED = "retired"


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIAL = "partial"
    CRASHED = "crashed"  # left `running` by a process that died; closed by the next refresh


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that reads back as UTC on every backend.

    SQLite keeps no offset, so without this it hands back naive datetimes while Postgres hands back aware
    ones, and comparing the two raises. Naive input is refused rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: pass an aware one, e.g. datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


intpk = Annotated[int, mapped_column(primary_key=True)]
sha256 = Annotated[str, mapped_column(String(64))]
created_at = Annotated[datetime, mapped_column(UTCDateTime, server_default=func.current_timestamp())]
updated_at = Annotated[
    datetime,
    mapped_column(UTCDateTime, server_default=func.current_timestamp(), onupdate=func.current_timestamp()),
]
