"""The Text-to-LoRA task suite: rule-built behaviours, their descriptions, reference outputs and checkers.

A behaviour is a chain of rules applied to an input (``hypernet.t2l_inputs.Item``): at most one
*content* rule that decides what the answer looks like (one word, JSON with given keys, a bullet list, a
date format, a label from a set...) followed by *style* rules that transform it (upper case, a fixed
prefix or suffix, no punctuation...). The chain renders the reference output of every input by rule,
so supervised training needs no teacher model, and its checkers decide whether ANY output complies:
an output complies when every rule's checker accepts it. Checkers test the format a rule asks for
(and, for refusals and label sets, the decision), not the factual correctness of the answer.

Descriptions are templated paraphrases: every rule has four phrasings, every phrasing is wrapped in
eight sentence frames (``Always ...``, ``From now on, ...``). Training sees three phrasings in six
frames; the held-out descriptions are the fourth phrasing in every frame plus the others in the two
remaining frames. Whole behaviours are held out too: three single rules and six combinations of seen
rules (``SPLITS``). ``composed_behaviours`` draws further training combinations (any training rule
followed by a style rule) for runs that should learn to compose rules, never one of the held-out ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

from hypernet.t2l_inputs import Item, pool
from hypernet.t2l_rules import RULES, STYLE, Rule

__all__ = [
    "RULES",
    "SPLITS",
    "Behaviour",
    "Rule",
    "behaviour",
    "behaviours",
    "composed_behaviours",
    "describe",
]


@dataclass(frozen=True)
class Behaviour:
    name: str
    rules: tuple[Rule, ...]

    @property
    def pool(self) -> str:
        return self.rules[0].pool

    def target(self, item: Item) -> str:
        """The reference output for ``item``: the sentence answer through every rule in turn."""
        text = item.sentence
        for rule in self.rules:
            text = rule.render(item, text)
        return text

    def complies(self, item: Item, output: str) -> bool:
        return all(rule.check(item, output) for rule in self.rules)

    def inputs(self, split: str) -> tuple[Item, ...]:
        return pool(self.pool, split)

    def descriptions(self, split: str) -> list[str]:
        return describe(self.rules, split)


_TRAIN_COMBOS = [
    ("answer_is", "upper"),
    ("one_word", "quotes"),
    ("short", "lower"),
    ("suffix_hope", "lower"),
    ("prefix_sure", "upper"),
    ("no_punct", "lower"),
]
_HELDOUT_COMBOS = [
    ("one_word", "upper"),
    ("json_answer", "lower"),
    ("bullets", "upper"),
    ("answer_is", "suffix_hope"),
    ("short", "upper"),
    ("no_punct", "upper"),
]
_HELDOUT_SINGLES = ["bold", "json_confidence", "suffix_smile"]


def _name(rules: tuple[str, ...]) -> str:
    return "+".join(rules)


SPLITS: dict[str, list[str]] = {
    "train": [n for n in RULES if n not in _HELDOUT_SINGLES] + [_name(c) for c in _TRAIN_COMBOS],
    "heldout": _HELDOUT_SINGLES + [_name(c) for c in _HELDOUT_COMBOS],
}

# ---------------------------------------------------------------- descriptions

_FRAMES = (
    "{X}.",
    "Always {x}.",
    "Please {x}.",
    "From now on, {x}.",
    "Rule: {x}.",
    "You must {x}.",
    "When you reply, {x}.",
    "For every answer, {x}.",
)
_JOIN = ("{a} and {b}", "{a}; also, {b}", "{a}, and {b}", "{a}, and in addition {b}")
_TRAIN_FRAMES = 6


def _frame(frame: str, phrase: str) -> str:
    return frame.format(X=phrase[0].upper() + phrase[1:], x=phrase)


@cache
def describe(rules: tuple[Rule, ...], split: str) -> list[str]:
    """The descriptions of a rule chain: ``train`` (18) or ``heldout`` (14), never overlapping."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    phrases = [rules[0].phrases[k] for k in range(4)]
    for rule in rules[1:]:
        phrases = [_JOIN[k].format(a=p, b=rule.phrases[k]) for k, p in enumerate(phrases)]
    out = []
    for k, phrase in enumerate(phrases):
        for f, frame in enumerate(_FRAMES):
            seen = k < 3 and f < _TRAIN_FRAMES
            if seen == (split == "train"):
                out.append(_frame(frame, phrase))
    return out


def behaviour(name: str) -> Behaviour:
    """A behaviour by name: a rule (``upper``) or a ``+``-joined chain of rules (``one_word+upper``)."""
    parts = name.split("+")
    unknown = [p for p in parts if p not in RULES]
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown} in behaviour {name!r}; known: {sorted(RULES)}")
    return Behaviour(name, tuple(RULES[p] for p in parts))


def behaviours(split: str) -> list[Behaviour]:
    """The behaviours trained on (``train``) or held out whole (``heldout``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return [behaviour(n) for n in SPLITS[split]]


def composed_behaviours(n: int, seed: int = 0) -> list[Behaviour]:
    """``n`` extra training behaviours: a training rule followed by a style rule, drawn reproducibly by
    ``seed`` from the pairs whose reference outputs comply with both rules on every training input (so
    the chain is consistent: ``upper`` after ``json_answer`` would break its keys) and which are not
    already a behaviour of either split. A pair made of a held-out combination's rules, in either order,
    and any pair with a held-out rule are excluded, so the held-out behaviours stay unseen."""
    if n <= 0:
        return []
    taken = {frozenset(name.split("+")) for names in SPLITS.values() for name in names}
    singles = [name for name in SPLITS["train"] if "+" not in name]
    pairs = [(a, b) for a in singles for b in sorted(STYLE) if b in singles and a != b]
    pairs = [p for p in pairs if frozenset(p) not in taken]
    rng = random.Random(f"{seed}:t2l-composed")
    rng.shuffle(pairs)
    out: list[Behaviour] = []
    for pair in pairs:
        beh = behaviour(_name(pair))
        if all(beh.complies(item, beh.target(item)) for item in beh.inputs("train")):
            out.append(beh)
            if len(out) == n:
                break
    return out
