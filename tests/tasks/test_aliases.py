"""Alias moves: keyword-only, recorded once per real move, promotion retires the adapter it replaces."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tasks import aliases
from tasks.catalog.db import session_scope
from tasks.catalog.models import AliasEvent
from tasks.runtime import runtime


def test_model_names_are_stable_per_document_id():
    assert aliases.model_name("kb", "docs", 7) == "kb-docs-7"


def test_move_alias_is_keyword_only_and_records_only_real_moves(kb, monkeypatch):
    rt = runtime(kb)
    moves: dict[tuple[str, str], str] = {}

    class FakeRegistry:
        def set_alias(self, model, alias, version):
            before, moves[model, alias] = moves.get((model, alias)), version
            return before

        def delete_alias(self, model, alias):
            return moves.pop((model, alias), None)

    monkeypatch.setattr(rt, "_registry", FakeRegistry())
    with session_scope(rt.sessions) as s:
        with pytest.raises(TypeError):
            aliases.move_alias(rt, s, "m", "candidate", "1", None, "me", "why", None)  # type: ignore[misc]
        args = {"model": "m", "alias": "candidate", "adapter": None, "actor": "me", "flow_run_id": None}
        assert aliases.move_alias(rt, s, version="1", reason="first", **args)
        s.flush()
        assert not aliases.move_alias(rt, s, version="1", reason="again", **args)
        assert aliases.move_alias(rt, s, version=None, reason="removed", **args)
        s.flush()
        events = s.scalars(select(AliasEvent).order_by(AliasEvent.id)).all()
        assert [(e.from_version, e.to_version, e.reason) for e in events] == [
            (None, "1", "first"),
            ("1", None, "removed"),
        ]
