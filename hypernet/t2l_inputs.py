"""Generated inputs for the Text-to-LoRA task suite: short questions and texts with known answers.

Every input is built from small built-in tables by rule, so each behaviour's reference output can be
produced without a teacher model (``hypernet.t2l_tasks``). Pools are split into training and held-out
inputs by a fixed seeded shuffle, so evaluation never sees a training input.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

__all__ = ["Item", "NUMBER_WORDS", "MONTHS", "pool"]


@dataclass(frozen=True)
class Item:
    """One input and what a rule needs to answer it.

    ``answer`` is the short answer (one word or a number), ``sentence`` the plain one-sentence answer;
    ``topic`` names the input's subject (``geography``, ``maths``, ``colours``...) and ``value`` holds
    pool-specific data (a date as ``YYYY-MM-DD``, a label, a number).
    """

    question: str
    answer: str
    sentence: str
    topic: str
    value: str = ""


_CAPITALS = {
    "France": "Paris",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Russia": "Moscow",
    "Austria": "Vienna",
    "Ireland": "Dublin",
    "Portugal": "Lisbon",
    "Cuba": "Havana",
    "Poland": "Warsaw",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Chile": "Santiago",
    "Thailand": "Bangkok",
    "Canada": "Ottawa",
    "China": "Beijing",
    "Hungary": "Budapest",
    "Denmark": "Copenhagen",
    "Belgium": "Brussels",
    "Turkey": "Ankara",
    "Iran": "Tehran",
}
_COLOURS = {
    "the sky on a clear day": "blue",
    "fresh grass": "green",
    "snow": "white",
    "a ripe banana": "yellow",
    "coal": "black",
    "a ripe tomato": "red",
    "a carrot": "orange",
    "a lemon": "yellow",
    "milk": "white",
    "a crow": "black",
    "an emerald": "green",
    "a ruby": "red",
    "chocolate": "brown",
    "a plum": "purple",
    "a pumpkin": "orange",
    "the sea": "blue",
}
_OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "up": "down",
    "happy": "sad",
    "light": "dark",
    "early": "late",
    "open": "closed",
    "full": "empty",
    "strong": "weak",
    "old": "new",
    "high": "low",
    "hard": "soft",
    "wet": "dry",
    "rich": "poor",
    "loud": "quiet",
}
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_EVENTS = ["the meeting", "the concert", "the wedding", "the launch", "the exam", "the trip", "the match"]
_SUBJECTS = ["The film", "The hotel", "The meal", "The book", "The service", "The concert", "The game"]
_POSITIVE = ["wonderful", "excellent", "delightful", "fantastic", "great", "lovely", "superb"]
_NEGATIVE = ["terrible", "awful", "boring", "disappointing", "horrible", "dreadful", "poor"]
_TOPICS = {
    "sports": [
        "The team won the match in the last minute.",
        "She ran the marathon in three hours.",
        "The striker scored two goals.",
        "He trained at the tennis club all week.",
        "The cyclists raced up the mountain.",
        "Our swimmer broke the national record.",
    ],
    "food": [
        "The soup needs more salt and pepper.",
        "We baked fresh bread this morning.",
        "The pasta was cooked with garlic and basil.",
        "She ordered a salad with grilled fish.",
        "He made pancakes with honey for breakfast.",
        "The chef roasted the chicken slowly.",
    ],
    "weather": [
        "Heavy rain is expected tomorrow afternoon.",
        "The wind blew hard all night.",
        "It was sunny and warm at the beach.",
        "Snow covered the roads this morning.",
        "A storm is moving in from the west.",
        "The fog lifted before noon.",
    ],
}


def _qa_items() -> list[Item]:
    items = [
        Item(f"What is the capital of {c}?", cap, f"The capital of {c} is {cap}.", "geography")
        for c, cap in _CAPITALS.items()
    ]
    items += [
        Item(f"What colour is {thing}?", col, f"{thing[0].upper()}{thing[1:]} is {col}.", "colours")
        for thing, col in _COLOURS.items()
    ]
    items += [
        Item(f"What is the opposite of {w}?", o, f"The opposite of {w} is {o}.", "words")
        for w, o in _OPPOSITES.items()
    ]
    return items + list(_maths_items())


def _maths_items() -> list[Item]:
    rng, items = random.Random("t2l:maths"), []
    for _ in range(40):
        a, b = rng.randint(1, 10), rng.randint(1, 10)
        items.append(
            Item(f"What is {a} plus {b}?", str(a + b), f"{a} plus {b} is {a + b}.", "maths", str(a + b))
        )
    return items


def _date_items() -> list[Item]:
    rng, items = random.Random("t2l:dates"), []
    for _ in range(60):
        y, m, d = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
        event = rng.choice(_EVENTS)
        spoken = f"{MONTHS[m - 1]} {d}, {y}"
        items.append(
            Item(
                f"When is {event}? It is on {spoken}.",
                spoken,
                f"{event[0].upper()}{event[1:]} is on {spoken}.",
                "dates",
                f"{y:04d}-{m:02d}-{d:02d}",
            )
        )
    return items


def _unit_items() -> list[Item]:
    rng, items = random.Random("t2l:units"), []
    for _ in range(40):
        n = rng.randint(2, 40)
        items.append(
            Item(
                f"How many centimetres are in {n} metres?",
                str(100 * n),
                f"There are {100 * n} centimetres in {n} metres.",
                "units",
                str(100 * n),
            )
        )
    return items


def _sentiment_items() -> list[Item]:
    items = []
    for s in _SUBJECTS:
        for adj in _POSITIVE:
            items.append(Item(f"{s} was {adj}.", "positive", "positive", "sentiment", "positive"))
        for adj in _NEGATIVE:
            items.append(Item(f"{s} was {adj}.", "negative", "negative", "sentiment", "negative"))
    return items


def _topic_items() -> list[Item]:
    return [Item(t, label, label, "topic", label) for label, texts in _TOPICS.items() for t in texts]


def _yesno_items() -> list[Item]:
    rng, items, caps = random.Random("t2l:yesno"), [], list(_CAPITALS.items())
    for i, (country, cap) in enumerate(caps):
        if i % 2:
            return_cap, label = caps[(i + 3) % len(caps)][1], "no"
        else:
            return_cap, label = cap, "yes"
        items.append(
            Item(f"Is {return_cap} the capital of {country}?", label.capitalize(), label, "yesno", label)
        )
    rng.shuffle(items)
    return items


_BUILDERS = {
    "qa": _qa_items,
    "maths": _maths_items,
    "dates": _date_items,
    "units": _unit_items,
    "sentiment": _sentiment_items,
    "topic": _topic_items,
    "yesno": _yesno_items,
}


@cache
def pool(name: str, split: str) -> tuple[Item, ...]:
    """The inputs of pool ``name`` for ``split`` (``train``: three quarters, ``heldout``: the rest)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown input pool {name!r}; known: {sorted(_BUILDERS)}")
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    items = list({item.question: item for item in _BUILDERS[name]()}.values())  # no input in both splits
    random.Random(f"t2l:split:{name}").shuffle(items)
    cut = (3 * len(items)) // 4
    return tuple(items[:cut] if split == "train" else items[cut:])
