"""`instill eval` on the tiny Llama with a briefly trained hypernetwork: the JSON holds the issue's keys
with sane values; the real-text corpus is split by topic and its probes avoid CD's training answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hypernet.corpus import (
    CORPUS_FILE,
    NOTICE,
    CorpusConfig,
    CorpusError,
    build_corpus,
    heldout_probes,
    load_corpus,
    prose_paragraphs,
)
from hypernet.generator_eval import EvalConfig, run_eval, to_markdown
from hypernet.probes import QUESTION_PREFIX, sentence_probes, split_sentences
from tests.fixtures.hypernet import train_tiny_checkpoint

TOPIC = """The "if" statement
******************

The "if" statement is used for conditional execution of code in the program:

   if_stmt ::= "if" assignment_expression ":" suite

It selects exactly one of the suites by evaluating the expressions one by one until one is found to be
true; then that suite is executed and no other part of the statement is executed or evaluated. [1]

Changed in version 3.9: something changed here in a minor way.

If all expressions are false, the suite of the else clause, if present, is executed by the interpreter.
"""


@pytest.fixture(scope="module")
def checkpoint(tiny_base, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_checkpoint(tiny_base, tmp_path_factory.mktemp("hypernet-run"))


def _small(checkpoint: Path, **overrides) -> EvalConfig:
    options = {
        "synthetic_docs": 4,
        "real_docs": 3,
        "em_docs": 2,
        "real_em_docs": 1,
        "generator_docs": 2,
        "real_generator_docs": 2,
        "generator_options": {"cd": {"steps": 2}, "hypernet+cd": {"steps": 2}},
        "checkpoint": str(checkpoint),
        "max_new_tokens": 4,
    }
    return EvalConfig(**(options | overrides))


def test_eval_reports_the_issue_keys_for_both_sets_and_every_generator(tiny_base, checkpoint: Path) -> None:
    records: list[dict] = []
    result = run_eval(tiny_base, _small(checkpoint), records.append)
    for name in ("synthetic", "real"):
        s = result[name]
        assert set(s["gap_closed"]) == {"mean", "ci_low", "ci_high"}
        assert s["gap_closed"]["ci_low"] <= s["gap_closed"]["mean"] <= s["gap_closed"]["ci_high"]
        assert all(math.isfinite(s[k]) for k in ("gap_closed_bias_only", "gap_closed_wrong_doc"))
        assert {"base", "adapter", "in_context"} <= s["exact_match"].keys()
        assert all(0 <= s["exact_match"][k] <= 1 for k in ("base", "adapter", "in_context"))
        assert set(s["nll"]) == {"base", "bias", "own", "wrong", "in_context"}
        assert all(v > 0 for v in s["nll"].values())
    assert result["synthetic"]["docs"] == 4 and result["real"]["docs"] == 3
    assert set(result["generators"]) == {"hypernet", "cd", "hypernet+cd"}
    for g in result["generators"].values():
        assert {"gap_closed", "gap_closed_wrong_doc", "exact_match", "seconds_per_doc"} <= g.keys()
        assert g["seconds_per_doc"] > 0 and g["docs"] == 2 and 0 <= g["exact_match"] <= 1
        assert g["real"]["docs"] == 2 and g["real"]["exact_match"] is None
        assert set(g["real"]["gap_closed"]) == {"mean", "ci_low", "ci_high"}
    assert result["generator_docs"] == {"synthetic": 2, "real": 2, "flat": "synthetic"}
    fingerprints = {g["fingerprint"] for g in result["generators"].values()}
    assert len(fingerprints) == 3
    assert result["meta"]["checkpoint_sha256"] and result["meta"]["base_model_sha256"]
    assert json.loads(json.dumps(result)) == result  # plain JSON all the way down
    assert any(r["kind"] == "eval-generator" for r in records)
    table = to_markdown(result)
    assert "### Held-out synthetic documents (4 documents" in table and "| hypernet+cd | real (2) |" in table
    assert "wrong-document adapter" in table and "### Held-out real documents" in table


def test_wrong_document_control_differs_from_the_own_adapter(tiny_base, checkpoint: Path) -> None:
    result = run_eval(tiny_base, _small(checkpoint, real_docs=0, generators=()))
    s = result["synthetic"]
    assert "real" not in result and "generators" not in result
    assert s["nll"]["own"] != s["nll"]["wrong"]  # generated adapters depend on the document
    assert s["nll"]["in_context"] != s["nll"]["base"]


def test_eval_config_rejects_unknown_generators_and_tiny_sets() -> None:
    with pytest.raises(ValueError, match="unknown generator"):
        EvalConfig(generators=("magic",))
    with pytest.raises(ValueError, match="synthetic_docs >= 2"):
        EvalConfig(synthetic_docs=1)


def test_prose_paragraphs_drop_headings_code_version_notes_and_footnote_marks() -> None:
    paragraphs = prose_paragraphs(TOPIC)
    assert len(paragraphs) == 3
    assert paragraphs[0].startswith('The "if" statement is used')
    assert all("::=" not in p and "Changed in version" not in p and "[1]" not in p for p in paragraphs)
    assert "\n" not in paragraphs[1]


def test_corpus_is_split_by_topic_within_word_bounds() -> None:
    topics = {f"topic{i}": TOPIC for i in range(12)}
    docs = build_corpus(topics, CorpusConfig(min_words=20, max_words=60))
    assert docs and all(20 <= len(d.text.split()) <= 60 for d in docs)
    for topic in topics:
        assert len({d.split for d in docs if d.topic == topic}) == 1
    assert {d.split for d in docs} == {"train", "heldout"}


def test_shipped_corpus_has_a_notice_and_both_splits() -> None:
    assert json.loads(CORPUS_FILE.read_text().splitlines()[0]) == {"notice": NOTICE}
    train, held = load_corpus("train"), load_corpus("heldout")
    assert len(train) > 100 and len(held) > 30
    assert not {d.topic for d in train} & {d.topic for d in held}


def test_unreadable_corpus_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"notice": "x"}\n{"nope": 1}\n')
    with pytest.raises(CorpusError, match=str(bad)):
        load_corpus(path=bad)


def test_heldout_probes_never_ask_for_what_context_distillation_trains_on() -> None:
    text = load_corpus("heldout")[0].text
    probes = heldout_probes(text, max_probes=6)
    assert probes and all(p.text.startswith(QUESTION_PREFIX) for p in probes)
    sentences = split_sentences(text)
    for probe in probes:
        asked = f"{probe.text[len(QUESTION_PREFIX) :]} {probe.answer}"
        (sentence,) = [s for s in sentences if s.startswith(asked)]
        # CD's probe of this sentence shows its first half and trains on the rest (sentence_probes)
        cd = sentence_probes(sentence, 1)[0]
        assert len(probe.answer.split()) >= 2
        assert cd.question.endswith(asked) or asked in cd.question


def test_eval_command_writes_json_and_markdown(tiny_model_dir: Path, checkpoint: Path, tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from flows.ml_commands import register

    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    app = typer.Typer()
    app.command("noop")(lambda: None)
    register(app)
    args = ["eval", "--json", str(tmp_path / "e.json"), "--base", str(tiny_model_dir), "--checkpoint"]
    args += [str(checkpoint), "--synthetic-docs", "3", "--real-docs", "2", "--em-docs", "1"]
    args += ["--generator-docs", "2", "--generators", "hypernet,cd", "--cd-steps", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "e.json").read_text())
    assert set(data["generators"]) == {"hypernet", "cd"} and data["synthetic"]["docs"] == 3
    assert "| cd |" in (tmp_path / "e.md").read_text()
    bad = CliRunner().invoke(app, [*args[:5], "--checkpoint", str(tmp_path / "none")])
    assert bad.exit_code == 2 and "no hypernetwork checkpoint" in bad.output
