"""QA gates: measure a new adapter against its document and decide whether it may get an alias.

Four gates (thresholds in ``instill.yaml`` under ``gates:``, see ``GatesConfig``):

- knowledge: answer NLL of the document's probes under the base model alone, with the adapter, and with
  the document in context; the adapter must close ``min_gap_closed`` of the gap. Exact match of greedy
  answers is recorded (not gated) for probes whose answers have at most four words.
- specificity: the adapter's NLL gain on its own probes must beat its gain on another document's probes
  by ``min_specificity`` nats (a collapsed generator emits one adapter that helps every document alike).
- preservation: NLL on the packaged general-text set may rise by at most ``max_preservation_increase``.
- regression: on probes of the previous revision whose answers did not change, the new adapter must not
  be worse than the previous adapter by more than ``regression_tolerance`` nats.

Probes are the user's ``NAME.qa.yaml`` beside the document plus automatic probes from its sentences. The
measurements are ``hypernet.metrics``'s; this module only chooses probes, applies thresholds and returns
a ``GateReport`` whose ``rows()`` match the catalog's ``qa_results`` columns.
"""

from __future__ import annotations

import hashlib
import math
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from hypernet.base_model import BaseModel as LanguageModel
from hypernet.lora import LoraWeights
from hypernet.metrics import answer_nll, exact_match, gap_closed, general_texts, greedy_answers, text_nll
from hypernet.probes import QUESTION_PREFIX, Probe, sentence_probes
from tasks.settings import GatesConfig
from tasks.sources.base import QA_SUFFIX

# The CD generator (and the hypernetwork's text documents) draw probes with seed 0 and cut each sentence
# in half. Automatic QA probes draw their sentences with another seed and cut each sentence after its
# first third, so no QA probe is a (question, answer) pair a generator trained on: on short documents
# the sentences are the same ones, but the model must produce words it was only ever shown as prompt.
QA_SEED = 7919
MAX_ANSWER_WORDS = 24  # as in hypernet.probes: bounds the cost per probe
SHORT_ANSWER_WORDS = 4  # exact match is measured for answers this short
MAX_EXACT_MATCH_PROBES = 8  # greedy decoding is the slowest measurement: bounded per document
GREEDY_LEAD_TOKENS = 24  # decoded beyond the answer's length ("The chief engineer was ...")
# Below this in-context gain (nats) the document does not help answer its probes: gap closed is undefined.
MIN_CONTEXT_GAIN = 0.05

KNOWLEDGE, SPECIFICITY, PRESERVATION, REGRESSION = "knowledge", "specificity", "preservation", "regression"


class QAFileError(ValueError):
    """A ``NAME.qa.yaml`` file is unreadable or malformed; the message names the file and the item."""


class _QAItem(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, coerce_numbers_to_str=True)

    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)


_QA_FILE = TypeAdapter(list[_QAItem])


@dataclass(frozen=True)
class PreviousAdapter:
    """The adapter a new one replaces, with the text it was made from (for the regression gate; the
    previous text's automatic probes are drawn here)."""

    weights: LoraWeights
    text: str


@dataclass
class Metric:
    """One measured value; ``threshold`` is None for values that are recorded but not gated."""

    name: str
    value: float | None
    threshold: float | None = None
    passed: bool = True
    detail: dict[str, Any] | None = None


@dataclass
class GateResult:
    """One gate's metrics; a skipped gate has one metric (value None) and passes with its reason."""

    suite: str
    metrics: list[Metric]
    skipped: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.metrics)

    def failures(self) -> list[str]:
        return [
            f"{self.suite}: {m.name} {_fmt(m.value)} (threshold {_fmt(m.threshold)})"
            + (f": {m.detail['reason']}" if m.detail and "reason" in m.detail else "")
            for m in self.metrics
            if not m.passed
        ]


@dataclass
class GateReport:
    """Every gate's result for one adapter; the verdict passes only if every gate passes."""

    suite_version: str
    gates: list[GateResult] = field(default_factory=list)
    seconds: float = 0.0
    disabled: bool = False

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def gate(self, suite: str) -> GateResult:
        for g in self.gates:
            if g.suite == suite:
                return g
        raise KeyError(f"no {suite!r} gate in this report")

    def failures(self) -> list[str]:
        """Why the adapter failed, one line per failed metric (empty when it passed)."""
        return [line for g in self.gates for line in g.failures()]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per metric, keyed like the ``qa_results`` columns (without ``adapter_id``)."""
        return [
            {
                "suite": g.suite,
                "suite_version": self.suite_version,
                "metric": m.name,
                "value": _finite(m.value),
                "threshold": m.threshold,
                "passed": m.passed,
                "detail": _json_safe(m.detail),
            }
            for g in self.gates
            for m in g.metrics
        ]


def qa_path_for(document: Path) -> Path:
    """The probe file beside a document: ``guide.md`` -> ``guide.qa.yaml``."""
    return document.with_name(document.stem + QA_SUFFIX)


def parse_qa(text: str, name: str) -> list[Probe]:
    """Probes from the text of a ``NAME.qa.yaml`` file (a list of ``{question, answer}``); ``name`` is
    used in errors."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise QAFileError(f"{name}: not valid YAML: {exc}") from None
    if not isinstance(raw, list):
        raise QAFileError(f"{name}: expected a list of {{question, answer}} items, got {type(raw).__name__}")
    try:
        items = _QA_FILE.validate_python(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        loc = re.sub(r"^(\d+)", lambda m: f"item {int(m.group(1)) + 1}", loc)
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise QAFileError(f"{name}: {loc}: {err['msg']}{more}") from None
    return list(dict.fromkeys(Probe(i.question, i.answer) for i in items))


def load_qa_file(path: Path) -> list[Probe]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QAFileError(f"{path}: cannot read the probe file: {exc}") from None
    return parse_qa(text, str(path))


def auto_probes(text: str, cfg: GatesConfig) -> list[Probe]:
    """``cfg.auto_probes`` probes from the document's first ``cfg.max_context_words`` words (see QA_SEED)."""
    if cfg.auto_probes == 0:
        return []
    drawn = sentence_probes(context_part(text, cfg.max_context_words), cfg.auto_probes, QA_SEED, 1 << 20)
    return [_cut_at_third(_sentence_of(p)) for p in drawn]


def load_probes(document_text: str, qa_file: Path | None, cfg: GatesConfig) -> list[Probe]:
    """The document's probes: those of ``qa_file`` (when given; it must exist) then automatic ones."""
    user = load_qa_file(qa_file) if qa_file is not None else []
    return list(dict.fromkeys([*user, *auto_probes(document_text, cfg)]))


def context_part(text: str, max_words: int) -> str:
    """``text`` up to the end of its ``max_words``-th word, formatting kept."""
    for i, match in enumerate(re.finditer(r"\S+", text)):
        if i == max_words - 1:
            return text[: match.end()]
    return text


def run_gates(
    base: LanguageModel,
    weights: LoraWeights,
    text: str,
    probes: Sequence[Probe],
    cfg: GatesConfig,
    *,
    other_probes: Sequence[Probe] | None = None,
    previous: PreviousAdapter | None = None,
) -> GateReport:
    """Run every gate on ``weights``, the adapter generated from ``text``.

    Args:
        base: the base model the adapter was made for.
        weights: the new adapter.
        text: the document's normalised text (cut to ``cfg.max_context_words`` for the in-context NLL).
        probes: the document's probes (``load_probes``).
        cfg: thresholds and sizes.
        other_probes: another document's probes, for specificity; None skips that gate.
        previous: the adapter this one replaces, for regression; None skips that gate.
    """
    if not cfg.enabled:
        return GateReport(cfg.suite_version, disabled=True)
    start = time.perf_counter()
    scorer = _Scorer(base, weights, context_part(text, cfg.max_context_words), previous)
    gates = [
        _timed(KNOWLEDGE, lambda: _knowledge(scorer, list(probes), cfg)),
        _timed(SPECIFICITY, lambda: _specificity(scorer, list(probes), other_probes, cfg)),
        _timed(PRESERVATION, lambda: _preservation(scorer, cfg)),
        _timed(REGRESSION, lambda: _regression(scorer, text, previous, cfg)),
    ]
    return GateReport(cfg.suite_version, gates, time.perf_counter() - start)


# Measurements that do not depend on the adapter (base model alone, base with the document in context),
# kept for the process: a refresh gates many adapters, and other documents' probes recur in specificity.
_SHARED: dict[tuple, Any] = {}
_SHARED_MAX = 50_000


class _Scorer:
    """Answer NLLs per (condition, probe), each computed once: the gates share probes and conditions."""

    def __init__(
        self, base: LanguageModel, weights: LoraWeights, context: str, previous: PreviousAdapter | None
    ) -> None:
        self.base, self.weights, self.context = base, weights, context
        self.conditions: dict[str, tuple[LoraWeights | None, str | None]] = {
            "base": (None, None),
            "adapter": (weights, None),
            "in_context": (None, context),
            "previous": (previous.weights if previous else None, None),
        }
        model = (base.model_id, base.weights_sha256, str(base.device))
        self._keys = {
            "base": (*model, "base"),
            "in_context": (*model, "in_context", hashlib.sha256(context.encode()).hexdigest()),
        }
        self._cache: dict[tuple, Any] = {}

    def nll(self, probes: Sequence[Probe], condition: str) -> list[float]:
        weights, context = self.conditions[condition]
        return self._cached("nll", condition, probes, lambda ps: answer_nll(self.base, ps, weights, context))

    def greedy(self, probes: Sequence[Probe], condition: str) -> list[str]:
        weights, context = self.conditions[condition]
        longest = max(len(self.base.tokenizer(p.answer)["input_ids"]) for p in probes)

        def answer(ps: list[Probe]) -> list[str]:
            # Small models lead in with a restatement of the question: room for it beyond the answer.
            questions = [p.question for p in ps]
            return greedy_answers(self.base, questions, weights, longest + GREEDY_LEAD_TOKENS, context)

        return self._cached("greedy", condition, probes, answer)

    def _cached(self, kind: str, condition: str, probes: Sequence[Probe], compute) -> list:
        shared = condition in self._keys
        cache = _SHARED if shared else self._cache
        prefix = (kind, *self._keys.get(condition, (condition,)))
        if len(cache) > _SHARED_MAX:
            cache.clear()
        missing = [p for p in dict.fromkeys(probes) if (*prefix, p) not in cache]
        if missing:
            cache.update({(*prefix, p): v for p, v in zip(missing, compute(missing), strict=True)})
        return [cache[(*prefix, p)] for p in probes]

    def mean(self, probes: Sequence[Probe], condition: str) -> float:
        return statistics.fmean(self.nll(probes, condition))


def _knowledge(scorer: _Scorer, probes: list[Probe], cfg: GatesConfig) -> GateResult:
    if not probes:
        reason = "the document has no probes: no sentence of six or more words and no NAME.qa.yaml"
        return GateResult(
            KNOWLEDGE, [Metric("gap_closed", None, cfg.min_gap_closed, False, {"reason": reason})]
        )
    base, adapter, context = (scorer.nll(probes, c) for c in ("base", "adapter", "in_context"))
    means = [statistics.fmean(v) for v in (base, adapter, context)]
    gap = gap_closed(*means, min_gain=MIN_CONTEXT_GAIN)
    detail: dict[str, Any] = {
        "probes": len(probes),
        "per_probe": [
            {"question": p.question[-80:], "answer": p.answer[:80], "base": b, "adapter": a, "in_context": c}
            for p, b, a, c in list(zip(probes, base, adapter, context, strict=True))[:24]
        ],
    }
    if math.isnan(gap):
        detail["reason"] = (
            f"the document in context lowers answer NLL by {means[0] - means[2]:.3f} nats, less than "
            f"{MIN_CONTEXT_GAIN}: these probes cannot show knowledge (add questions to NAME.qa.yaml)"
        )
    metrics = [
        Metric("nll_base", means[0]),
        Metric("nll_adapter", means[1]),
        Metric("nll_in_context", means[2]),
        Metric(
            "gap_closed", gap, cfg.min_gap_closed, not math.isnan(gap) and gap >= cfg.min_gap_closed, detail
        ),
    ]
    return GateResult(KNOWLEDGE, metrics + _exact_match(scorer, probes))


def _exact_match(scorer: _Scorer, probes: list[Probe]) -> list[Metric]:
    """Greedy exact match on short answers, without and with the adapter; recorded, not gated.

    Not measured with the document in context: every probe would re-read the document while decoding
    (seconds per probe on a CPU), where NLL shares one pass over it.
    """
    short = [p for p in probes if len(p.answer.split()) <= SHORT_ANSWER_WORDS][:MAX_EXACT_MATCH_PROBES]
    if not short:
        return []
    metrics = []
    for condition in ("base", "adapter"):
        answers = scorer.greedy(short, condition)
        hits = [exact_match(a, p.answer) for a, p in zip(answers, short, strict=True)]
        detail = {"probes": len(short), "answers": [a[:80] for a in answers]}
        metrics.append(Metric(f"exact_match_{condition}", sum(hits) / len(hits), detail=detail))
    return metrics


def _specificity(
    scorer: _Scorer, probes: list[Probe], other: Sequence[Probe] | None, cfg: GatesConfig
) -> GateResult:
    if not other or not probes:
        reason = "no other document's probes to compare with" if probes else "the document has no probes"
        return _skipped(SPECIFICITY, "margin", cfg.min_specificity, reason)
    own = scorer.mean(probes, "base") - scorer.mean(probes, "adapter")
    theirs = scorer.mean(other, "base") - scorer.mean(other, "adapter")
    margin = own - theirs
    detail = {"own_probes": len(probes), "other_probes": len(other)}
    return GateResult(
        SPECIFICITY,
        [
            Metric("own_gain", own),
            Metric("other_gain", theirs),
            Metric("margin", margin, cfg.min_specificity, margin >= cfg.min_specificity, detail),
        ],
    )


_BASE_GENERAL_NLL: dict[tuple[str, str, str, int], float] = {}


def _preservation(scorer: _Scorer, cfg: GatesConfig) -> GateResult:
    texts, base = general_texts(), scorer.base
    # The base's NLL on the general set does not depend on the adapter: measured once per process.
    key = (base.model_id, base.weights_sha256, str(base.device), cfg.preservation_tokens)
    if key not in _BASE_GENERAL_NLL:
        _BASE_GENERAL_NLL[key] = text_nll(base, texts, None, cfg.preservation_tokens)
    before = _BASE_GENERAL_NLL[key]
    after = text_nll(base, texts, scorer.weights, cfg.preservation_tokens)
    rise = (after - before) / before
    limit = cfg.max_preservation_increase
    detail = {"tokens": cfg.preservation_tokens, "set": "hypernet/data/general.txt"}
    return GateResult(
        PRESERVATION,
        [
            Metric("nll_base", before),
            Metric("nll_adapter", after),
            Metric("relative_increase", rise, limit, rise <= limit, detail),
        ],
    )


def _regression(scorer: _Scorer, text: str, previous: PreviousAdapter | None, cfg: GatesConfig) -> GateResult:
    tolerance = cfg.regression_tolerance
    if previous is None:
        return _skipped(REGRESSION, "mean_increase", tolerance, "no previous adapter for this document")
    kept = unchanged_probes(previous, text, cfg)
    if not kept:
        reason = "no probe of the previous revision is unchanged in this one"
        return _skipped(REGRESSION, "mean_increase", tolerance, reason)
    old, new = scorer.nll(kept, "previous"), scorer.nll(kept, "adapter")
    rises = [n - o for n, o in zip(new, old, strict=True)]
    worst = max(range(len(kept)), key=rises.__getitem__)
    increase = statistics.fmean(rises)
    detail = {
        "probes": len(kept),
        "worst": {"question": kept[worst].question[-80:], "previous": old[worst], "new": new[worst]},
    }
    return GateResult(
        REGRESSION,
        [
            Metric("nll_previous", statistics.fmean(old)),
            Metric("nll_new", statistics.fmean(new)),
            Metric("mean_increase", increase, tolerance, increase <= tolerance, detail),
        ],
    )


def unchanged_probes(previous: PreviousAdapter, text: str, cfg: GatesConfig) -> list[Probe]:
    """Automatic probes of the previous revision whose sentence appears verbatim in the new text, so
    their answers still hold."""
    flat = " " + " ".join(context_part(text, cfg.max_context_words).split()) + " "
    kept = [p for p in auto_probes(previous.text, cfg) if f" {_sentence_of(p)} " in flat]
    return list(dict.fromkeys(kept))


def _sentence_of(probe: Probe) -> str:
    return f"{probe.question.removeprefix(QUESTION_PREFIX)} {probe.answer}"


def _cut_at_third(sentence: str) -> Probe:
    words = sentence.split()
    cut = max(1, len(words) // 3)
    return Probe(QUESTION_PREFIX + " ".join(words[:cut]), " ".join(words[cut : cut + MAX_ANSWER_WORDS]))


def _skipped(suite: str, metric: str, threshold: float, reason: str) -> GateResult:
    return GateResult(suite, [Metric(metric, None, threshold, True, {"skipped": reason})], skipped=reason)


def _timed(suite: str, gate) -> GateResult:
    start = time.perf_counter()
    result = gate()
    result.seconds = time.perf_counter() - start
    for m in result.metrics:
        if m.threshold is not None:
            m.detail = {**(m.detail or {}), "seconds": round(result.seconds, 3)}
    return result


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"


def evaluation_gate(cfg: GatesConfig | None = None):
    """The gates as a callable for ``hypernet.generator_eval.run_eval`` (which cannot import tasks):
    ``gate(base, weights, document, other_text)`` -> {"passed": bool, "gates": {suite: bool}}."""
    cfg = cfg or GatesConfig()

    def gate(base: LanguageModel, weights: LoraWeights, document: Any, other_text: str) -> dict[str, Any]:
        probes, other = load_probes(document.text, None, cfg), load_probes(other_text, None, cfg)
        report = run_gates(base, weights, document.text, probes, cfg, other_probes=other)
        return {"passed": report.passed, "gates": {g.suite: g.passed for g in report.gates}}

    return gate
