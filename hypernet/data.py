"""Seeded synthetic fact documents with templated questions, for training and evaluating Doc-to-LoRA.

Each document describes one invented person: a name built from syllables and 1-7 facts (birth year,
birth city, profession, employer, home city, a patent count, a hobby), interleaved with filler
sentences that carry no fact. Every fact has a question whose gold answer appears verbatim in the
document, so the in-context teacher can copy it and a generated adapter has to store it.

Held-out documents use entities AND values never seen in training (docs/hypernet-design.md): names, cities
and employers are assigned to a split by a stable hash of the string, years and counts by value mod 4,
professions and hobbies by disjoint lists. A network that merely memorises training values therefore
cannot score on held-out answers.

Curriculum: ``level`` 1 has one fact and no filler; higher levels add facts and filler (``LEVELS``).
Real text plugs in through ``text_document``: prefix -> continuation probes over any passage.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from hypernet.probes import sentence_probes

SPLITS = ("train", "heldout")
HELDOUT_MOD = 4  # years and counts with value % 4 == 0 are held out; hashed names 1 in 4

# level -> (min facts, max facts, min filler, max filler)
LEVELS = {1: (1, 1, 0, 0), 2: (1, 2, 0, 1), 3: (2, 4, 0, 2), 4: (3, 7, 1, 3)}

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "r", "s", "t", "th", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ei"]
_CODAS = ["", "", "n", "l", "r", "s", "th", "m", "x"]
_CITY_SUFFIX = ["ford", "holm", "burg", "vale", "mouth", "stad", "wick", "port"]
_ORG_SUFFIX = ["Systems", "Works", "Labs", "Industries", "Dynamics", "Foundry", "Group", "Institute"]

_PROFESSIONS_TRAIN = [
    "architect", "baker", "biologist", "carpenter", "chemist", "dentist", "economist", "electrician",
    "engineer", "farmer", "geologist", "historian", "journalist", "judge", "librarian", "mechanic",
    "nurse", "painter", "pharmacist", "photographer", "physicist", "pilot", "plumber", "poet",
    "potter", "sculptor", "surgeon", "tailor", "teacher", "translator",
]  # fmt: skip
_PROFESSIONS_HELDOUT = [
    "astronomer", "botanist", "cartographer", "glassblower", "locksmith", "meteorologist",
    "oceanographer", "violinist", "watchmaker", "zoologist",
]  # fmt: skip
_HOBBIES_TRAIN = [
    "chess", "fencing", "rowing", "knitting", "archery", "gardening", "cycling", "sailing", "origami",
    "juggling", "pottery", "birdwatching",
]  # fmt: skip
_HOBBIES_HELDOUT = ["falconry", "beekeeping", "calligraphy", "kayaking", "taxidermy"]

_FILLER = [
    "The region has long been known for its mild winters.",
    "Local newspapers covered the story at the time.",
    "Records from that period are incomplete.",
    "Several colleagues later described the work as careful and patient.",
    "The family rarely spoke to reporters.",
    "Little else is known about the early years.",
    "Friends remember a quiet sense of humour.",
    "The archive holds a few letters from that decade.",
]


@dataclass(frozen=True)
class Question:
    """A probe: the user's question and the gold answer (a span of the document)."""

    text: str
    answer: str
    fact: str  # fact type, for per-type metrics


@dataclass(frozen=True)
class Document:
    """A document with its probes; ``doc_id`` is unique within a split."""

    doc_id: str
    text: str
    questions: tuple[Question, ...]
    level: int = 0
    facts: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(frozen=True)
class DataConfig:
    """How many documents of which curriculum levels, from which seed."""

    seed: int = 0
    n_train: int = 1200  # spread evenly over the levels 1..max_level
    n_heldout: int = 64  # at eval_level
    max_level: int = 2  # richest curriculum level used for training
    eval_level: int = 2


def student_prompt(question: str) -> str:
    """The user turn the student (base + adapter, no document) answers."""
    return f"{question} Answer in a few words."


def teacher_prompt(document: str, question: str) -> str:
    """The user turn of the in-context teacher: the document, then the question."""
    return f"{document}\n\n{student_prompt(question)}"


# ---------------------------------------------------------------- split-aware value pools


def _split_of_string(s: str) -> str:
    digest = hashlib.sha256(s.lower().encode()).digest()
    return "heldout" if digest[0] % HELDOUT_MOD == 0 else "train"


def _split_of_number(n: int) -> str:
    return "heldout" if n % HELDOUT_MOD == 0 else "train"


def _word(rng: random.Random, n_syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syllables)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


def _in_split(rng: random.Random, split: str, make) -> str:
    while True:  # rejection sampling: a quarter of strings are held out, so this ends fast
        value = make(rng)
        if _split_of_string(value) == split:
            return value


def _number_in_split(rng: random.Random, split: str, lo: int, hi: int) -> int:
    while True:
        n = rng.randint(lo, hi)
        if _split_of_number(n) == split:
            return n


def _person(rng: random.Random, split: str) -> str:
    return _in_split(rng, split, lambda r: f"{_word(r, r.randint(1, 2))} {_word(r, 2)}")


def _city(rng: random.Random, split: str) -> str:
    return _in_split(rng, split, lambda r: _word(r, r.randint(1, 2)) + r.choice(_CITY_SUFFIX))


def _org(rng: random.Random, split: str) -> str:
    return _in_split(rng, split, lambda r: f"{_word(r, 2)} {r.choice(_ORG_SUFFIX)}")


def _pick(rng: random.Random, split: str, train: list[str], heldout: list[str]) -> str:
    return rng.choice(heldout if split == "heldout" else train)


# fact type -> (value maker, sentence templates, question templates); {n} is the person's name
FACTS = {
    "birth_year": (
        lambda r, s: str(_number_in_split(r, s, 1900, 1999)),
        ["{n} was born in {v}.", "Born in {v}, {n} grew up in a large family."],
        ["In which year was {n} born?", "What year was {n} born in?"],
    ),
    "birth_city": (
        _city,
        ["{n} was born in the town of {v}.", "{n} spent childhood in {v}, the town of their birth."],
        ["In which town was {n} born?", "What is the birthplace of {n}?"],
    ),
    "profession": (
        lambda r, s: _pick(r, s, _PROFESSIONS_TRAIN, _PROFESSIONS_HELDOUT),
        ["{n} works as a {v}.", "By profession, {n} is a {v}."],
        ["What is the profession of {n}?", "What does {n} do for a living?"],
    ),
    "employer": (
        _org,
        ["{n} is employed by {v}.", "For many years {n} has worked at {v}."],
        ["Which company employs {n}?", "Where does {n} work?"],
    ),
    "home_city": (
        _city,
        ["{n} now lives in {v}.", "These days {n} makes a home in {v}."],
        ["In which city does {n} live now?", "Where does {n} live today?"],
    ),
    "patents": (
        lambda r, s: str(_number_in_split(r, s, 2, 99)),
        ["{n} holds {v} patents.", "Over the years {n} has been granted {v} patents."],
        ["How many patents does {n} hold?", "How many patents has {n} been granted?"],
    ),
    "hobby": (
        lambda r, s: _pick(r, s, _HOBBIES_TRAIN, _HOBBIES_HELDOUT),
        ["In spare time, {n} enjoys {v}.", "The favourite pastime of {n} is {v}."],
        ["What is the favourite pastime of {n}?", "Which hobby does {n} enjoy?"],
    ),
}


# ---------------------------------------------------------------- documents


def make_document(seed: int, split: str, index: int, level: int) -> Document:
    """One document, a pure function of (seed, split, index, level)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if level not in LEVELS:
        raise ValueError(f"unknown curriculum level {level}; expected one of {sorted(LEVELS)}")
    rng = random.Random(f"instill-facts:{seed}:{split}:{level}:{index}")
    lo, hi, flo, fhi = LEVELS[level]
    name = _person(rng, split)
    fact_types = rng.sample(sorted(FACTS), rng.randint(lo, hi))
    facts, sentences, questions = {}, [], []
    for fact in fact_types:
        make_value, sentence_templates, question_templates = FACTS[fact]
        value = make_value(rng, split)
        facts[fact] = value
        sentences.append(rng.choice(sentence_templates).format(n=name, v=value))
        questions.append(Question(rng.choice(question_templates).format(n=name), value, fact))
    for filler in rng.sample(_FILLER, rng.randint(flo, fhi)):
        sentences.insert(rng.randint(1, len(sentences)), filler)
    text = " ".join(sentences)
    return Document(f"{split}-{level}-{index:05d}", text, tuple(questions), level, {"name": name, **facts})


def make_split(cfg: DataConfig, split: str) -> list[Document]:
    """Training documents spread evenly over levels 1..max_level, or held-out ones at eval_level."""
    if split == "heldout":
        return [make_document(cfg.seed, split, i, cfg.eval_level) for i in range(cfg.n_heldout)]
    levels = range(1, cfg.max_level + 1)
    return [make_document(cfg.seed, split, i, levels[i % len(levels)]) for i in range(cfg.n_train)]


def curriculum_level(progress: float, max_level: int) -> int:
    """The richest level to sample from at ``progress`` in [0, 1]: level 1 first, all levels by half-way."""
    return max(1, min(max_level, 1 + int(2 * progress * max_level)))


def text_document(doc_id: str, text: str, n_probes: int = 4, seed: int = 0) -> Document:
    """A real-text document with prefix -> continuation probes (the hook for a real corpus).

    The probes are ``hypernet.probes.sentence_probes``: half a sentence shown, the rest expected.
    """
    probes = sentence_probes(text, max_probes=n_probes, seed=seed)
    return Document(doc_id, text, tuple(Question(p.question, p.answer, "continuation") for p in probes), 0)
