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
    assert set(result["generators"]) == {"hypernet", "cd", "hypernet+cd", "memory"}
    for g in result["generators"].values():
        assert {"gap_closed", "gap_closed_wrong_doc", "exact_match", "seconds_per_doc"} <= g.keys()
        assert g["seconds_per_doc"] > 0 and g["docs"] == 2 and 0 <= g["exact_match"] <= 1
        assert g["real"]["docs"] == 2 and g["real"]["exact_match"] is None
        assert set(g["real"]["gap_closed"]) == {"mean", "ci_low", "ci_high"}
    assert result["generator_docs"] == {"synthetic": 2, "real": 2, "flat": "synthetic"}
    fingerprints = {g["fingerprint"] for g in result["generators"].values()}
    assert len(fingerprints) == len(result["generators"]) == 4  # every generator names itself apart
    assert result["meta"]["checkpoint_sha256"] and result["meta"]["base_model_sha256"]
    assert result["meta"]["hypernet_config"]["memory"]["ridge"] > 0  # the memory is on by default, recorded
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
    with pytest.raises(ValueError, match="synthetic_docs 0 or >= 2"):
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
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    args = ["eval", "--json", str(tmp_path / "e.json"), "--base", str(tiny_model_dir), "--checkpoint"]
    args += [str(checkpoint), "--no-gates", "--set", "synthetic_docs=3", "--set", "real_docs=2"]
    args += ["--set", "em_docs=1", "--set", "generator_docs=2", "--set", 'generators=["hypernet","cd"]']
    args += ["--set", 'generator_options={"cd":{"steps":1}}']
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "e.json").read_text())
    assert set(data["generators"]) == {"hypernet", "cd"} and data["synthetic"]["docs"] == 3
    assert "| cd |" in (tmp_path / "e.md").read_text()
    unknown = CliRunner().invoke(app, [*args[:5], "--set", "no_such_field=1"])
    assert unknown.exit_code == 2 and "no_such_field" in unknown.output
    bad = CliRunner().invoke(app, [*args[:5], "--checkpoint", str(tmp_path / "none")])
    assert bad.exit_code == 2 and "no hypernetwork checkpoint" in bad.output


def test_eval_with_t2l_adds_the_text_to_lora_section(
    tiny_model_dir: Path, checkpoint: Path, tiny_t2l_dir: Path, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / ".instill"))
    args = ["eval", "--json", str(tmp_path / "e.json"), "--base", str(tiny_model_dir), "--checkpoint"]
    args += [str(checkpoint), "--no-gates", "--set", "synthetic_docs=2", "--set", "real_docs=0"]
    args += ["--set", "em_docs=0", "--set", "generators=[]", "--t2l", "--t2l-checkpoint", str(tiny_t2l_dir)]
    t2l_sets = ['seen=["upper"]', 'unseen=["one_word+upper"]', "descriptions=1", "inputs=1", "oracles=[]"]
    t2l_sets += ["probe_behaviours=0", "preservation_adapters=1", "preservation_tokens=32"]
    t2l_sets += ["max_new_tokens=4"]
    result = CliRunner().invoke(app, args + [f"--t2l-set={s}" for s in t2l_sets])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "e.json").read_text())
    assert set(data["t2l"]["sets"]) == {"seen", "unseen"} and data["synthetic"]["docs"] == 2
    assert "## Text-to-LoRA" in (tmp_path / "e.md").read_text()
    bad = CliRunner().invoke(app, [*args, "--t2l-set", "sen=[]"])
    assert bad.exit_code == 2 and "sen" in bad.output


# ------------------------------------------------------------ held-out package corpus (hypernet.eval_real)

NAMES = [
    "Varnholt",
    "Quillmoor",
    "Tolvern",
    "Ostrava",
    "Kestrel",
    "Mireille",
    "Brisket",
    "Harbour",
    "Lantern",
    "Okonkwo",
    "Pellinor",
]


def _package_texts() -> list[tuple[str, str]]:
    """(package, text): one-sentence documents with a date and a name each, in three packages."""
    rows = []
    for i in range(36):
        name = NAMES[i % len(NAMES)]
        rows.append((f"pkg{i % 3}", f"It was released in {1990 + i} by the {name} Group."))
    return rows


def write_package_corpus(root: Path, rows: list[tuple[str, str]]) -> Path:
    """A package corpus in the format of ``instill corpus build``; every document held out."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"doc_id": f"{pkg}:f{i}.html#0", "package": pkg, "source_file": f"f{i}.html", "title": "",
                    "text": text, "n_tokens": len(text.split()), "split": "heldout"})
        for i, (pkg, text) in enumerate(rows)
    ]  # fmt: skip
    (root / "documents.jsonl").write_text("\n".join(lines) + "\n")
    (root / "manifest.json").write_text(json.dumps({"format": 1, "documents": len(rows)}))
    return root


def _fake_gate(base, weights, doc, other_text):
    # knowledge passes for even-numbered years, specificity always: known pass rates
    even = int(doc.text.split("in ")[1][:4]) % 2 == 0
    return {"passed": even, "gates": {"knowledge": {"passed": even}, "specificity": {"passed": True}}}


def test_real_corpus_section_by_length_type_and_generator(
    tiny_base, checkpoint: Path, tmp_path: Path
) -> None:
    from hypernet.eval_real import CHOICES

    corpus = write_package_corpus(tmp_path / "corpus", _package_texts())
    cfg = _small(checkpoint, synthetic_docs=0, real_docs=0, generators=(), corpus=str(corpus),
                 real_bucket_docs=2, real_generator_docs=2, real_gate_all=True,
                 real_em_conditions=("base", "bias", "own", "wrong", "in_context"),
                 real_generators=("hypernet", "cd:1", "hypernet+cd:1"))  # fmt: skip
    records: list[dict] = []
    result = run_eval(tiny_base, cfg, records.append, gate=_fake_gate)
    assert set(result) == {"real_corpus", "meta"}
    s = result["real_corpus"]
    chunk = s["chunk_tokens"]
    assert chunk == 32
    for k in ("1", "2", "4"):
        assert s["buckets"][k]["docs"] == 2
        assert (int(k) - 0.5) * chunk <= s["buckets"][k]["tokens_mean"] <= int(k) * chunk
    assert s["buckets"]["4"]["joined"] == 2  # one-sentence documents joined within a package
    for r in s["per_doc"]:
        assert (r["chunks"] - 0.5) * chunk <= r["tokens"] <= r["chunks"] * chunk
        assert {p["kind"] for p in r["probes"]} <= {"date", "name", "number", "term", "continuation"}
    ids = [part for r in s["per_doc"] for part in r["doc_id"].split("+")[:1]]
    assert len(ids) == len(set(ids)) == 6

    o = s["overall"]
    assert o["docs"] == 6 and set(o["gap_closed"]) == {"bias", "own", "wrong"}
    for v in [
        *o["gap_closed"].values(),
        o["own_minus_wrong"],
        o["own_minus_bias"],
        *o["multiple_choice"].values(),
    ]:
        assert v["ci_low"] <= v["mean"] <= v["ci_high"]
    assert set(o["multiple_choice"]) == {"base", "bias", "own", "wrong", "in_context"}
    assert all(0 <= v["mean"] <= 1 for v in o["multiple_choice"].values())
    assert set(o["exact_match"]) == set(o["multiple_choice"])
    evens = sum(int(r["doc_id"].split(":f")[1].split(".")[0]) % 2 == 0 for r in s["per_doc"])
    assert o["gate_pass_rate"]["knowledge"] == o["gate_pass_rate"]["all"] == round(evens / 6, 4)
    assert o["gate_pass_rate"]["specificity"] == 1.0 and o["gate_pass_rate"]["docs"] == 6
    assert {"knowledge", "date", "name", "continuation"} <= set(s["by_type"])
    assert s["by_type"]["date"]["docs"] == 6 and set(s["by_chunks"]) == {"1", "2", "4"}
    assert s["by_chunks"]["4"]["docs"] == 2 and s["by_chunks"]["4"]["knowledge"]["probes"] > 0

    gens = s["generators"]
    assert list(gens) == ["hypernet", "cd:1", "hypernet+cd:1"] and s["generator_docs"] == {
        "1": 2,
        "2": 2,
        "4": 2,
    }
    for g in gens.values():
        assert g["docs"] == 6 and g["overall"]["seconds_per_doc"] > 0
        assert set(g["by_chunks"]) == {"1", "2", "4"}
        assert g["overall"]["gate_pass_rate"]["docs"] == 6
        assert g["overall"]["nll"]["base"] == o["nll"]["base"]  # reused, same documents
        assert "multiple_choice" in g["overall"]["knowledge"]
    assert gens["hypernet"]["overall"]["gap_closed"]["own"] == o["gap_closed"]["own"]
    assert any(r["kind"] == "eval-generator" and r["generator"] == "cd:1" for r in records)
    assert json.loads(json.dumps(result)) == result
    table = to_markdown(result)
    assert "### Held-out real documents (6 documents" in table and "| by type: date |" in table
    assert "| 4 chunk(s), knowledge |" in table and "| hypernet+cd:1 |" in table
    assert CHOICES == 4


def test_multiple_choice_is_correct_only_when_the_gold_answer_is_strictly_lowest(
    tiny_base, monkeypatch
) -> None:
    from hypernet import eval_real
    from hypernet.data import Document, Question

    # NLL = answer length, so the shortest candidate wins by construction
    monkeypatch.setattr(
        eval_real, "answer_nll", lambda base, probes, w, ctx=None: [len(p.answer) for p in probes]
    )
    doc = Document("d", "text", (Question("q1", "ab", "name"), Question("q2", "abcd", "name"),
                                 Question("q3", "xy", "date"), Question("q4", "a", "name")))  # fmt: skip
    choices = [["ab", "abc", "abcd", "abcde"], ["abcd", "a", "abcdef", "abcdefg"],
               ["xy", "zw", "uvw", "rstu"], ["a"]]  # fmt: skip
    gold, correct = eval_real.score(tiny_base, doc, choices, None)
    assert gold == [2, 4, 2, 1]
    assert correct == [True, False, False, None]  # lowest; beaten; tied; no distractors


def test_summaries_pool_probes_and_split_by_type_and_length() -> None:
    from hypernet.eval_real import breakdown, summarise

    def probe(kind, base, own, mc_own):
        nll = {"base": base, "bias": base, "own": own, "wrong": base, "in_context": 1.0}
        return {"kind": kind, "nll": nll, "mc": {"own": mc_own, "base": False}, "em": {}}

    records = [
        {
            "doc_id": "a",
            "chunks": 1,
            "probes": [probe("date", 3.0, 2.0, True), probe("name", 3.0, 3.0, False)],
        },
        {"doc_id": "b", "chunks": 2, "probes": [probe("date", 5.0, 3.0, True)], "seconds": 2.0},
        {"doc_id": "c", "chunks": 2, "probes": [probe("continuation", 2.0, 2.0, False)], "seconds": 4.0},
    ]
    s = summarise(records, "date")
    assert s["docs"] == 2 and s["probes"] == 2
    assert s["gap_closed"]["own"]["mean"] == round((1 + 2) / (2 + 4), 4)  # ratio of means over documents
    assert s["gap_closed"]["wrong"]["mean"] == 0 and s["own_minus_wrong"]["mean"] == 0.5
    assert s["multiple_choice"]["own"]["mean"] == 1.0 and s["multiple_choice"]["base"]["mean"] == 0.0
    assert s["seconds_per_doc"] == 2.0  # only the documents that have a date probe
    overall = summarise(records)
    assert (
        overall["multiple_choice"]["own"]["mean"] == 0.5 and overall["multiple_choice"]["own"]["probes"] == 4
    )
    assert summarise(records, "knowledge")["docs"] == 2 and summarise(records, "term") == {
        "docs": 0,
        "probes": 0,
    }
    b = breakdown(records, (1, 2), seed=0)
    assert b["by_chunks"]["2"]["docs"] == 2 and b["by_chunks"]["2"]["knowledge"]["docs"] == 1
    assert list(b["by_type"]) == ["knowledge", "date", "name", "continuation"]


def test_documents_are_picked_by_length_joined_within_a_package_and_never_reused() -> None:
    from hypernet.corpus import RealDocument
    from hypernet.eval_real import select_documents

    words = lambda text: len(text.split())  # noqa: E731
    sentence = "It was released in {} by the Varnholt Group and Kestrel Desk."  # 12 words
    corpus = [RealDocument(f"p{i % 2}:{i}", f"p{i % 2}", "heldout", sentence.format(1900 + i), 12)
              for i in range(40)]  # fmt: skip
    picked = select_documents(corpus, words, 12, (1, 2, 4), per_bucket=3, n_continuation=0)
    assert [len(picked[k]) for k in (1, 2, 4)] == [3, 3, 3]
    seen: set[str] = set()
    for k, docs in picked.items():
        for d in docs:
            assert 6 <= d.tokens / k <= 12 and len(d.parts) == max(1, k)
            assert len({p.split(":")[0] for p in d.parts}) == 1  # one package
            assert not seen & set(d.parts)
            seen |= set(d.parts)
    assert [d.package for d in picked[1]] == ["p0", "p1", "p0"]  # packages take turns


def test_gate_verdicts_and_generator_variants_are_parsed() -> None:
    from hypernet.eval_real import gate_verdict, parse_variant

    assert gate_verdict(True) == {"passed": True, "gates": {}}
    report = {"passed": False, "gates": {"knowledge": {"passed": False, "skipped": None}, "regression": True}}
    assert gate_verdict(report) == {"passed": False, "gates": {"knowledge": False, "regression": True}}
    assert parse_variant("cd:10") == ("cd", 10) and parse_variant("hypernet") == ("hypernet", None)
    with pytest.raises(ValueError, match="NAME:STEPS"):
        parse_variant("hypernet:3")
    with pytest.raises(ValueError, match="unknown generator"):
        EvalConfig(real_generators=("magic:3",))
