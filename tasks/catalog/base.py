"""The declarative base: one MetaData with a naming convention, and how Python types map to columns."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Enum, MetaData
from sqlalchemy.orm import DeclarativeBase

from tasks.catalog.types import UTCDateTime

# Postgres' own default names, spelled out so that every backend and every migration agrees on them.
NAMING_CONVENTION = {
    "ix": "%(table_name)s_%(column_0_N_name)s_idx",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "ck": "%(table_name)s_%(constraint_name)s_check",
    "fk": "%(table_name)s_%(column_0_N_name)s_fkey",
    "pk": "%(table_name)s_pkey",
}

ENUM_LENGTH = 32


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        # Enums persist by value as VARCHAR with no CHECK: a new state needs no migration, and SQLite and
        # Postgres store the same text. A string that is not a member is refused before it is written.
        enum.Enum: Enum(
            enum.Enum,
            native_enum=False,
            length=ENUM_LENGTH,
            validate_strings=True,
            values_callable=lambda members: [m.value for m in members],
        ),
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
    }
