"""Answering from a refreshed tiny-model knowledge base: production by alias, cache, routing, strategies."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.kb import instill
from tests.fixtures.serving import served_kb, served_kb_session  # noqa: F401


@pytest.fixture
def live_kb(served_kb):  # noqa: F811
    return served_kb.config


def test_ask_names_the_production_adapter_and_caches_it_by_sha256(live_kb, served_kb):  # noqa: F811
    from tasks.answer import Answerer

    answerer = Answerer(str(live_kb), strategy="top1")
    docs = {d.label: d for d in answerer.documents()}
    assert set(docs) == {"docs:alpha.md", "docs:beta.txt", "docs:gamma.html"}
    plan = answerer.plan("question", ["docs:beta.txt"])
    assert [d.label for d in plan.documents] == ["docs:beta.txt"] and not plan.routed
    cached = served_kb.home / "serving" / "adapters" / docs["docs:beta.txt"].sha256
    assert (cached / "adapter_model.safetensors").is_file()
    result = answerer.answer("Who leads the crew?", ["docs:beta.txt"])
    assert result["adapters"][0]["version"] == docs["docs:beta.txt"].version
    assert result["finish_reason"] in ("stop", "length")


def test_routing_picks_the_document_that_holds_the_words(live_kb):
    from tasks.answer import Answerer

    answerer = Answerer(str(live_kb), strategy="rag")
    plan = answerer.plan("Where is Gamma tea grown, on which hills?")
    assert plan.routed and plan.documents[0].label == "docs:gamma.html"
    assert "Sorrel hills" in plan.context and plan.weights is None
    both = answerer.plan("Who is the chief engineer of the Alpha station?", strategy="rag+cat")
    assert both.documents[0].label == "docs:alpha.md"
    assert both.weights is not None and both.weights.rank == 8 * len(both.documents) and both.context


def test_unknown_document_and_strategy_are_refused(live_kb):
    from tasks.answer import Answerer, AnswerError

    answerer = Answerer(str(live_kb))
    with pytest.raises(AnswerError, match="no document"):
        answerer.plan("q", ["docs:nope.md"])
    with pytest.raises(AnswerError, match="unknown strategy"):
        answerer.plan("q", strategy="magic")


def test_ask_command_streams_and_prints_json(live_kb):
    code, output = instill(
        "ask",
        "Who leads the Beta crew?",
        "--doc",
        "docs:beta.txt",
        "--json",
        "--max-tokens",
        "4",
        "--config",
        str(live_kb),
    )
    assert code == 0, output
    record = json.loads(output[output.index("{") :])
    assert record["adapters"][0]["document"] == "docs:beta.txt" and record["routed"] is False
    code, output = instill("ask", "Gamma tea hills?", "--max-tokens", "4", "--config", str(live_kb))
    assert code == 0, output
    assert "docs:gamma.html" in output
    code, output = instill("ask", "q", "--doc", "docs:missing", "--config", str(live_kb))
    assert code == 2 and "no document" in output
