"""QA gates: probe files, automatic probes, each gate's verdict and the report (tiny model; SmolLM2 slow)."""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import pytest

from hypernet.cd import distill
from hypernet.config import CDConfig
from hypernet.metrics import answer_nll
from hypernet.probes import Probe, sentence_probes
from tasks.catalog.models import QAResult
from tasks.qa import (
    KNOWLEDGE,
    PRESERVATION,
    REGRESSION,
    SPECIFICITY,
    PreviousAdapter,
    QAFileError,
    auto_probes,
    context_part,
    evaluation_gate,
    load_probes,
    parse_qa,
    qa_path_for,
    run_gates,
    unchanged_probes,
)
from tasks.settings import ConfigError, GatesConfig, load_knowledge_base
from tests.fixtures.qa import DOC_A, DOC_B, answer_adapter, random_adapter, zero_adapter

CFG = GatesConfig()
QA_YAML = """\
- question: Who was the chief engineer of the Zorblat protocol?
  answer: Mara Quill
- question: In which year was the protocol ratified?
  answer: 1987
"""


@pytest.fixture(scope="module")
def probes_a() -> list[Probe]:
    return auto_probes(DOC_A, CFG)


@pytest.fixture(scope="module")
def probes_b() -> list[Probe]:
    return auto_probes(DOC_B, CFG)


@pytest.fixture(scope="module")
def adapter_a(tiny_base, probes_a):
    """An adapter that knows document A's answers (see tests/fixtures/qa.py for why not CD)."""
    return answer_adapter(tiny_base, probes_a)


@pytest.fixture(scope="module")
def adapter_b(tiny_base, probes_b):
    return answer_adapter(tiny_base, probes_b)


# --- probe files and automatic probes ---------------------------------------------------------------


def test_qa_file_gives_probes_in_order_with_numbers_as_text(tmp_path: Path) -> None:
    path = tmp_path / "zorblat.qa.yaml"
    path.write_text(QA_YAML)
    probes = load_probes(DOC_A, path, CFG)
    assert probes[:2] == [
        Probe("Who was the chief engineer of the Zorblat protocol?", "Mara Quill"),
        Probe("In which year was the protocol ratified?", "1987"),
    ]
    assert probes[2:] == auto_probes(DOC_A, CFG) and len(probes) == 2 + CFG.auto_probes - 3  # 5 sentences


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("- question: Who?\n", "item 1.answer: Field required"),
        ("- question: Who?\n  answer: Mara\n- question: ''\n  answer: x\n", "item 2.question: String should"),
        ("- question: Who?\n  answer: Mara\n  source: p. 3\n", "item 1.source: Extra inputs"),
        ("question: Who?\nanswer: Mara\n", "expected a list of {question, answer} items, got dict"),
        ("- question: [unclosed\n", "not valid YAML"),
        ("", "expected a list of {question, answer} items, got NoneType"),
    ],
)
def test_a_bad_qa_file_is_refused_naming_the_file_and_item(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "guide.qa.yaml"
    path.write_text(content)
    with pytest.raises(QAFileError) as err:
        load_probes(DOC_A, path, CFG)
    assert str(err.value).startswith(f"{path}: ") and problem in str(err.value)


def test_a_missing_qa_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(QAFileError, match=r"missing\.qa\.yaml: cannot read"):
        load_probes(DOC_A, tmp_path / "missing.qa.yaml", CFG)


def test_parse_qa_names_the_given_source_and_drops_duplicates() -> None:
    assert parse_qa(QA_YAML + QA_YAML, "git:docs/z.qa.yaml") == parse_qa(QA_YAML, "x")
    with pytest.raises(QAFileError, match="^git:docs/z.qa.yaml: item 1.answer"):
        parse_qa("- question: Who?\n  answer: [a, b]\n", "git:docs/z.qa.yaml")


def test_qa_file_sits_beside_the_document() -> None:
    assert qa_path_for(Path("docs/guide.md")) == Path("docs/guide.qa.yaml")


def test_automatic_probes_are_never_the_pairs_cd_trains_on(tiny_base) -> None:
    trained = distill(tiny_base, DOC_A, CDConfig(steps=0)).probes
    assert trained == sentence_probes(DOC_A, 8, 0)
    ours = auto_probes(DOC_A, CFG)
    assert len(ours) == len(trained) == 5  # a short document: the same sentences, cut elsewhere
    assert not {p.question for p in ours} & {p.question for p in trained}
    assert not {p.answer for p in ours} & {p.answer for p in trained}
    for probe in ours:  # the answer starts with words CD only ever showed in its prompts
        sentence = probe.question.split(": ", 1)[1] + " " + probe.answer
        assert sentence.replace(" ", "") in DOC_A.replace(" ", "")


def test_automatic_probes_come_from_the_start_the_generator_reads() -> None:
    text = " ".join(f"Sentence {i} is here to make up a long document." for i in range(200))
    probes = auto_probes(text, GatesConfig(auto_probes=4, max_context_words=100))
    assert len(probes) == 4 and all(int(p.question.split()[-2]) < 10 for p in probes)
    assert context_part("a  b\nc d", 3) == "a  b\nc" and context_part("a b", 5) == "a b"
    assert auto_probes(text, GatesConfig(auto_probes=0)) == []


# --- gates ---------------------------------------------------------------------------------------------


def test_knowledge_gate_passes_an_adapter_that_knows_the_answers(tiny_base, probes_a, adapter_a) -> None:
    report = run_gates(tiny_base, adapter_a, DOC_A, probes_a, CFG)
    gate = report.gate(KNOWLEDGE)
    values = {m.name: m.value for m in gate.metrics}
    assert values["nll_base"] - values["nll_in_context"] > 0.05  # the tiny model's context helps a little
    assert values["nll_adapter"] < values["nll_base"] - 2
    assert gate.passed and values["gap_closed"] > 1


def test_knowledge_gate_fails_a_zero_adapter(tiny_base, probes_a, adapter_a) -> None:
    report = run_gates(tiny_base, zero_adapter(adapter_a), DOC_A, probes_a, CFG)
    gap = next(m for m in report.gate(KNOWLEDGE).metrics if m.name == "gap_closed")
    assert gap.value == pytest.approx(0.0, abs=1e-5) and not gap.passed and not report.passed
    assert report.failures()[0].startswith("knowledge: gap_closed 0")


def test_knowledge_gate_fails_with_a_reason_when_context_cannot_help(tiny_base, adapter_a) -> None:
    # No document text: the "in-context" prompt is the question alone, so the gap is undefined.
    probes = [Probe("Who was the chief engineer?", "Mara Quill")]
    report = run_gates(tiny_base, adapter_a, "", probes, CFG)
    gap = next(m for m in report.gate(KNOWLEDGE).metrics if m.name == "gap_closed")
    assert gap.value is not None and math.isnan(gap.value) and not gap.passed
    assert "cannot show knowledge" in gap.detail["reason"]
    assert report.rows()[3]["value"] is None  # NaN never reaches the catalog


def test_knowledge_gate_records_exact_match_for_short_answers(tiny_base, probes_a) -> None:
    question = "Who was the chief engineer of the Zorblat protocol?"
    short = [Probe(question, "Mara Quill")]
    # Trained with the full stop: nothing teaches the tiny model to end its turn, and without a
    # boundary it would run on into the next word ("Mara Quillte"), which is no whole-word match.
    weights = answer_adapter(tiny_base, [*probes_a, Probe(question, "Mara Quill.")])
    metrics = {
        m.name: m for m in run_gates(tiny_base, weights, DOC_A, short + probes_a, CFG).gate(KNOWLEDGE).metrics
    }
    assert metrics["exact_match_adapter"].value == 1.0 and metrics["exact_match_base"].value == 0.0
    assert metrics["exact_match_adapter"].threshold is None and metrics["exact_match_adapter"].passed
    assert metrics["exact_match_adapter"].detail["probes"] == 1  # only the short answer is decoded
    assert "exact_match_in_context" not in metrics


def test_specificity_passes_adapters_that_know_their_own_document(
    tiny_base, probes_a, probes_b, adapter_a, adapter_b
) -> None:
    for weights, text, own, other in [
        (adapter_a, DOC_A, probes_a, probes_b),
        (adapter_b, DOC_B, probes_b, probes_a),
    ]:
        gate = run_gates(tiny_base, weights, text, own, CFG, other_probes=other).gate(SPECIFICITY)
        margin = next(m for m in gate.metrics if m.name == "margin")
        assert gate.passed and margin.value > 2


def test_specificity_fails_one_adapter_given_for_two_documents(tiny_base, probes_a, probes_b) -> None:
    """A collapsed generator emits the same adapter for every document: it cannot be specific to both."""
    constant = answer_adapter(tiny_base, probes_a + probes_b)  # knows both documents equally well
    gates = [
        run_gates(tiny_base, constant, text, own, CFG, other_probes=other).gate(SPECIFICITY)
        for text, own, other in [(DOC_A, probes_a, probes_b), (DOC_B, probes_b, probes_a)]
    ]
    margins = [next(m.value for m in g.metrics if m.name == "margin") for g in gates]
    assert margins[0] == pytest.approx(-margins[1], abs=1e-6)  # what one document gains, the other loses
    assert not (gates[0].passed and gates[1].passed)
    assert abs(margins[0]) < 0.5  # against > 2 nats for the documents' own adapters (test above)
    # ... while it passes the knowledge gate: that gate alone rewards collapse
    assert run_gates(tiny_base, constant, DOC_A, probes_a, CFG).gate(KNOWLEDGE).passed


def test_specificity_is_skipped_with_a_reason_without_another_document(
    tiny_base, probes_a, adapter_a
) -> None:
    report = run_gates(tiny_base, adapter_a, DOC_A, probes_a, CFG)
    gate = report.gate(SPECIFICITY)
    assert gate.passed and gate.skipped == "no other document's probes to compare with"
    row = next(r for r in report.rows() if r["suite"] == SPECIFICITY)
    assert row["value"] is None and row["passed"] and row["detail"]["skipped"] == gate.skipped


def test_preservation_fails_an_adapter_that_wrecks_general_text(tiny_base, probes_a, adapter_a) -> None:
    parrot_probes = [Probe(p.question, " ".join(["the"] * 12)) for p in probes_a]
    parrot = answer_adapter(tiny_base, parrot_probes, steps=60)  # says "the" after anything
    bad = run_gates(tiny_base, parrot, DOC_A, probes_a, CFG).gate(PRESERVATION)
    good = run_gates(tiny_base, adapter_a, DOC_A, probes_a, CFG).gate(PRESERVATION)
    zero = run_gates(tiny_base, zero_adapter(adapter_a), DOC_A, probes_a, CFG).gate(PRESERVATION)
    rise = {
        name: next(m.value for m in g.metrics if m.name == "relative_increase")
        for name, g in [("bad", bad), ("good", good), ("zero", zero)]
    }
    assert not bad.passed and rise["bad"] > CFG.max_preservation_increase, rise
    assert good.passed and zero.passed and rise["zero"] == pytest.approx(0.0, abs=1e-6)


def test_regression_compares_unchanged_probes_with_the_previous_adapter(
    tiny_base, probes_a, adapter_a
) -> None:
    new_text = DOC_A.replace("about four hundred stations", "about nine hundred stations")
    previous = PreviousAdapter(adapter_a, DOC_A)
    kept = unchanged_probes(previous, new_text, CFG)
    assert len(kept) == len(probes_a) - 1 and all("stations" not in p.question + p.answer for p in kept)
    new_probes = auto_probes(new_text, CFG)
    same = run_gates(tiny_base, adapter_a, new_text, new_probes, CFG, previous=previous).gate(REGRESSION)
    worse = run_gates(tiny_base, zero_adapter(adapter_a), new_text, new_probes, CFG, previous=previous)
    increase = next(m for m in worse.gate(REGRESSION).metrics if m.name == "mean_increase")
    assert same.passed and not worse.gate(REGRESSION).passed and increase.value > 2
    assert increase.detail["probes"] == len(kept)


def test_regression_is_skipped_without_a_previous_adapter_or_unchanged_probes(
    tiny_base, probes_a, adapter_a
) -> None:
    first = run_gates(tiny_base, adapter_a, DOC_A, probes_a, CFG).gate(REGRESSION)
    assert first.passed and first.skipped == "no previous adapter for this document"
    rewritten = run_gates(
        tiny_base, adapter_a, DOC_B, probes_a, CFG, previous=PreviousAdapter(adapter_a, DOC_A)
    )
    assert rewritten.gate(REGRESSION).skipped == "no probe of the previous revision is unchanged in this one"


# --- the report ---------------------------------------------------------------------------------------


def test_report_rows_match_the_qa_results_columns(tiny_base, probes_a, probes_b, adapter_a) -> None:
    report = run_gates(
        tiny_base,
        adapter_a,
        DOC_A,
        probes_a,
        CFG,
        other_probes=probes_b,
        previous=PreviousAdapter(adapter_a, DOC_A),
    )
    columns = {c.name for c in QAResult.__table__.columns} - {"id", "adapter_id", "created_at"}
    rows = report.rows()
    assert rows and all(set(r) == columns for r in rows)
    assert {r["suite"] for r in rows} == {KNOWLEDGE, SPECIFICITY, PRESERVATION, REGRESSION}
    assert all(r["suite_version"] == CFG.suite_version for r in rows)
    json.dumps([r["detail"] for r in rows], allow_nan=False)
    gated = [r for r in rows if r["threshold"] is not None]
    assert [r["metric"] for r in gated] == ["gap_closed", "margin", "relative_increase", "mean_increase"]
    assert all(isinstance(r["detail"]["seconds"], float) for r in gated)
    assert report.passed == all(r["passed"] for r in rows) and report.passed
    assert report.failures() == []


def test_disabled_gates_measure_nothing_and_pass(tiny_base, probes_a) -> None:
    report = run_gates(
        tiny_base,
        random_adapter(answer_adapter(tiny_base, probes_a, steps=1), 5.0),
        DOC_A,
        probes_a,
        GatesConfig(enabled=False),
    )
    assert report.passed and report.disabled and report.rows() == [] and report.seconds == 0


def test_gates_config_is_read_from_instill_yaml_strictly(tmp_path: Path) -> None:
    path = tmp_path / "instill.yaml"
    base = "name: kb\nsources: [{kind: local, name: docs, path: docs}]\n"
    path.write_text(base + "gates: {min_gap_closed: 0.5, auto_probes: 4}\n")
    gates = load_knowledge_base(path).gates
    assert gates.min_gap_closed == 0.5 and gates.auto_probes == 4 and gates.enabled
    path.write_text(base)
    assert load_knowledge_base(path).gates == GatesConfig()
    path.write_text(base + "gates: {min_gap: 0.5}\n")
    with pytest.raises(ConfigError, match="gates.min_gap: Extra inputs"):
        load_knowledge_base(path)


# --- SmolLM2 -----------------------------------------------------------------------------------------

V1 = (
    "The Zorblat protocol was ratified in 1987 in the coastal town of Vennholm. Its chief engineer was "
    "Mara Quill, who had worked on radio relays for the navy. The protocol defines how lighthouse beacons "
    "exchange weather reports every seven minutes. In 1994 a second version added error correction and a "
    "checksum of sixteen bits. Today about four hundred stations use it, most of them along the coast."
)
V2 = V1.replace("every seven minutes", "every eleven minutes")
SMOLLM2_QA = """\
- question: Who was the chief engineer of the Zorblat protocol?
  answer: Mara Quill
- question: In which town was the Zorblat protocol ratified?
  answer: Vennholm
"""


@pytest.mark.slow
def test_smollm2_cd_adapter_passes_every_gate_and_a_zero_adapter_fails_knowledge(
    smollm2_base, tmp_path: Path
) -> None:
    qa_file = tmp_path / "zorblat.qa.yaml"
    qa_file.write_text(SMOLLM2_QA)
    cd = CDConfig(steps=20)  # the default lr; lr 1e-2 overfits this short text (preservation +0.30)
    previous = distill(smollm2_base, V1, cd).weights
    result = distill(smollm2_base, V2, cd)
    probes = load_probes(V2, qa_file, CFG)
    other = auto_probes(DOC_B, CFG)

    base_nll = answer_nll(smollm2_base, result.probes, None)  # the probes CD trained on
    assert statistics.fmean(answer_nll(smollm2_base, result.probes, result.weights)) < statistics.fmean(
        base_nll
    )

    start = time.perf_counter()
    report = run_gates(
        smollm2_base,
        result.weights,
        V2,
        probes,
        CFG,
        other_probes=other,
        previous=PreviousAdapter(previous, V1),
    )
    seconds = time.perf_counter() - start
    _print_report("CD, 20 steps", report, seconds, result.seconds)
    assert report.passed, report.failures()
    assert all(g.skipped is None for g in report.gates)

    zero = run_gates(smollm2_base, zero_adapter(result.weights), V2, probes, CFG, other_probes=other)
    _print_report("zero adapter", zero, zero.seconds, 0.0)
    assert not zero.gate(KNOWLEDGE).passed and zero.gate(PRESERVATION).passed

    wreck = run_gates(smollm2_base, random_adapter(result.weights, 0.5), V2, probes, CFG)
    _print_report("random adapter", wreck, wreck.seconds, 0.0)
    assert not wreck.gate(PRESERVATION).passed


def _print_report(name: str, report, seconds: float, generation_s: float) -> None:
    print(f"\n{name}: gates {seconds:.1f} s (generation {generation_s:.1f} s), passed={report.passed}")
    for gate in report.gates:
        values = ", ".join(f"{m.name}={m.value:.3f}" for m in gate.metrics if m.value is not None)
        print(f"  {gate.suite} ({gate.seconds:.1f} s): {values or gate.skipped}")


def test_the_evaluation_gate_reports_the_refresh_verdict_per_suite(tiny_base, adapter_a) -> None:
    from hypernet.data import Document

    verdict = evaluation_gate(CFG)(tiny_base, zero_adapter(adapter_a), Document("a", DOC_A, ()), DOC_B)
    assert verdict["passed"] is False and verdict["gates"][KNOWLEDGE] is False
    assert set(verdict["gates"]) >= {KNOWLEDGE, SPECIFICITY, PRESERVATION}
