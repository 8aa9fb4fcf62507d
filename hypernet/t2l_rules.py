"""The rules of the Text-to-LoRA task suite: four phrasings, a renderer and a checker each.

A content rule decides what the answer looks like (one word, JSON with given keys, a date format, a
label from a set...), a style rule transforms it (case, a fixed prefix or suffix, punctuation...).
``render(item, text)`` maps the answer so far to the rule's output, ``check(item, output)`` decides
whether any output complies. Checkers test the asked format (and, for refusals and label sets, the
decision), not the factual correctness of the answer. Behaviours chain rules: ``hypernet.t2l_tasks``.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from hypernet.t2l_inputs import MONTHS, NUMBER_WORDS, Item

__all__ = ["RULES", "STYLE", "Rule"]

Check = Callable[[Item, str], bool]
Render = Callable[[Item, str], str]


@dataclass(frozen=True)
class Rule:
    """One rule: four phrasings, how it renders (item, text so far) -> text, and its checker."""

    name: str
    phrases: tuple[str, str, str, str]
    render: Render
    check: Check
    pool: str = "qa"  # the inputs it applies to (content rules only)


# ---------------------------------------------------------------- checkers' helpers


def _words(text: str) -> list[str]:
    return text.split()


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines() if line.strip()]


def _bare(text: str) -> str:
    return text.strip().strip(".!").strip().lower()


def _json_keys(keys: set[str]) -> Check:
    def check(item: Item, out: str) -> bool:
        try:
            data = json.loads(out.strip())
        except ValueError:
            return False
        return isinstance(data, dict) and set(data) == keys

    return check


def _fullmatch(pattern: str, flags: int = 0) -> Check:
    rx = re.compile(pattern, flags)
    return lambda item, out: rx.fullmatch(out.strip()) is not None


def _one_of(labels: set[str]) -> Check:
    return lambda item, out: _bare(out) in labels


def _refusal(topic: str, sentence: str) -> tuple[Render, Check]:
    def render(item: Item, text: str) -> str:
        return text if item.topic == topic else sentence

    def check(item: Item, out: str) -> bool:
        refused = out.strip() == sentence
        return bool(out.strip()) and refused == (item.topic != topic)

    return render, check


_PUNCT = set(string.punctuation)
_MONTH_RX = "|".join(MONTHS)

# ---------------------------------------------------------------- the rules


def _content() -> list[Rule]:
    r = Rule
    return [
        r(
            "one_word",
            (
                "answer in one word",
                "reply with a single word only",
                "give a one-word answer",
                "respond using exactly one word and nothing else",
            ),
            lambda i, t: i.answer,
            lambda i, o: len(_words(o)) == 1,
        ),
        r(
            "json_answer",
            (
                'reply as JSON with the single key "answer"',
                'answer with a JSON object whose only key is "answer"',
                'format the reply as JSON: {"answer": ...}',
                'output only a JSON object holding your answer under "answer"',
            ),
            lambda i, t: json.dumps({"answer": i.answer}),
            _json_keys({"answer"}),
        ),
        r(
            "json_source",
            (
                'reply as JSON with the keys "answer" and "source"',
                'answer in JSON with an "answer" and a "source" field',
                "give a JSON object with keys answer and source",
                'return JSON holding the answer and where it comes from ("source")',
            ),
            lambda i, t: json.dumps({"answer": i.answer, "source": "general knowledge"}),
            _json_keys({"answer", "source"}),
        ),
        r(
            "json_confidence",
            (
                'reply as JSON with the keys "answer" and "confidence"',
                'answer in JSON with an "answer" and a "confidence" field',
                "give a JSON object with keys answer and confidence",
                'return JSON holding the answer and how confident you are ("confidence")',
            ),
            lambda i, t: json.dumps({"answer": i.answer, "confidence": "high"}),
            _json_keys({"answer", "confidence"}),
        ),
        r(
            "bullets",
            (
                "answer as a bullet list",
                "format the reply as a list of bullet points starting with a dash",
                "use dash bullet points for the answer",
                "write the answer as short bulleted lines",
            ),
            lambda i, t: f"- Question: {i.question}\n- Answer: {i.answer}",
            lambda i, o: len(_lines(o)) >= 2 and all(x.startswith("- ") for x in _lines(o)),
        ),
        r(
            "numbered",
            (
                "answer in numbered steps",
                "give the answer as a numbered list of steps",
                "reply step by step, numbering each step",
                "break the reply into steps labelled 1., 2., 3.",
            ),
            lambda i, t: f"1. Read the question.\n2. Recall the fact.\n3. {t}",
            lambda i, o: (
                len(_lines(o)) >= 2 and all(x.startswith(f"{k + 1}. ") for k, x in enumerate(_lines(o)))
            ),
        ),
        r(
            "xml",
            (
                "wrap the answer in <answer> tags",
                "put the answer between <answer> and </answer>",
                "reply with the answer inside an XML answer element",
                "enclose your answer in <answer></answer> tags",
            ),
            lambda i, t: f"<answer>{i.answer}</answer>",
            _fullmatch(r"<answer>[^<>\n]+</answer>"),
        ),
        r(
            "answer_is",
            (
                'reply in the form "The answer is X."',
                'start with "The answer is" followed by the answer',
                'always phrase it as "The answer is ..."',
                'answer with the sentence "The answer is" and then the answer',
            ),
            lambda i, t: f"The answer is {i.answer}.",
            lambda i, o: o.strip().lower().startswith("the answer is "),
        ),
        r(
            "key_value",
            (
                'reply as a single line "answer: X"',
                'write "answer:" then the answer on one line',
                "give the answer as a key-value line with the key answer",
                'use the YAML form "answer: value"',
            ),
            lambda i, t: f"answer: {i.answer}",
            _fullmatch(r"answer: [^\n]+"),
        ),
        r(
            "repeat_question",
            (
                'repeat the question after "Q:" and then answer after "A:"',
                "restate the question first, then give the answer",
                'use the format "Q: question" on one line and "A: answer" on the next',
                "echo the question before answering it",
            ),
            lambda i, t: f"Q: {i.question}\nA: {i.answer}",
            _fullmatch(r"Q: [^\n]+\nA: [^\n]+"),
        ),
        r(
            "word_per_line",
            (
                "put every word on its own line",
                "write one word per line",
                "break the answer so each line holds a single word",
                "answer with each word on a separate line",
            ),
            lambda i, t: "\n".join(t.split()),
            lambda i, o: len(_lines(o)) >= 3 and all(len(x.split()) == 1 for x in _lines(o)),
        ),
        r(
            "spell",
            (
                "spell the answer out letter by letter in capitals, separated by dashes",
                "reply by spelling the answer with dashes between capital letters",
                "give the answer spelled out, like P-A-R-I-S",
                "answer only with the capitalised letters of the answer joined by hyphens",
            ),
            lambda i, t: "-".join(i.answer.upper().replace(" ", "")),
            _fullmatch(r"[A-Z0-9](-[A-Z0-9])*"),
        ),
        r(
            "short",
            (
                "answer in five words or fewer",
                "keep the reply under six words",
                "be extremely brief: at most five words",
                "use no more than five words",
            ),
            lambda i, t: f"It is {i.answer}.",
            lambda i, o: 1 <= len(_words(o)) <= 5,
        ),
        r(
            "long",
            (
                "answer in at least twenty words",
                "give a long, detailed reply of twenty words or more",
                "never answer briefly; use at least twenty words",
                "write a full explanation of twenty or more words",
            ),
            lambda i, t: (
                f"{t} This is a well known fact that many people learn at school, and it is easy to remember."
            ),
            lambda i, o: len(_words(o)) >= 20,
        ),
    ]


def _prefix(name: str, text: str, phrases: tuple[str, str, str, str]) -> Rule:
    return Rule(
        name,
        phrases,
        lambda i, t: f"{text}{t}",
        lambda i, o: o.strip().lower().startswith(text.strip().lower()),
    )


def _suffix(name: str, text: str, phrases: tuple[str, str, str, str]) -> Rule:
    return Rule(
        name,
        phrases,
        lambda i, t: f"{t}{text}",
        lambda i, o: o.strip().lower().endswith(text.strip().lower()),
    )


def _style() -> list[Rule]:
    r = Rule
    return [
        r(
            "upper",
            (
                "answer in all capital letters",
                "write the whole reply in upper case",
                "use only uppercase letters",
                "shout: every letter must be a capital",
            ),
            lambda i, t: t.upper(),
            lambda i, o: bool(o.strip()) and not any(c.islower() for c in o),
        ),
        r(
            "lower",
            (
                "answer in lower case only",
                "write the whole reply in lowercase letters",
                "never use capital letters",
                "keep every letter small, no capitals at all",
            ),
            lambda i, t: t.lower(),
            lambda i, o: bool(o.strip()) and not any(c.isupper() for c in o),
        ),
        r(
            "no_punct",
            (
                "do not use any punctuation",
                "write the reply without punctuation marks",
                "leave out all punctuation",
                "no commas, full stops or other punctuation in the answer",
            ),
            lambda i, t: "".join(c for c in t if c not in _PUNCT),
            lambda i, o: bool(o.strip()) and not any(c in _PUNCT for c in o),
        ),
        _prefix(
            "prefix_answer",
            "Answer: ",
            (
                'begin every reply with "Answer:"',
                'start the response with the word "Answer:"',
                'prefix the reply with "Answer: "',
                'open each answer with the label "Answer:"',
            ),
        ),
        _prefix(
            "prefix_sure",
            "Sure! ",
            (
                'start every reply with "Sure!"',
                'begin with "Sure!" before answering',
                'open the answer with the word "Sure!"',
                'say "Sure!" first, then answer',
            ),
        ),
        _prefix(
            "persona_pirate",
            "Ahoy, matey! ",
            (
                'greet like a pirate with "Ahoy, matey!" before answering',
                'you are a pirate: open every reply with "Ahoy, matey!"',
                'start each answer with the pirate greeting "Ahoy, matey!"',
                'talk like a pirate and begin with "Ahoy, matey!"',
            ),
        ),
        _prefix(
            "persona_ada",
            "Hello, I am Ada. ",
            (
                'you are Ada: greet with "Hello, I am Ada." before answering',
                "introduce yourself as Ada at the start of each reply",
                'begin every answer with "Hello, I am Ada."',
                'act as the assistant Ada and open with "Hello, I am Ada."',
            ),
        ),
        _suffix(
            "suffix_hope",
            " Hope this helps.",
            (
                'end every reply with "Hope this helps."',
                'finish the answer with the sentence "Hope this helps."',
                'close with "Hope this helps."',
                'always add "Hope this helps." at the end',
            ),
        ),
        _suffix(
            "suffix_signoff",
            " -- Your assistant",
            (
                'sign off every reply with "-- Your assistant"',
                'end the answer with the signature "-- Your assistant"',
                'add "-- Your assistant" as the last words',
                'close each reply with the sign-off "-- Your assistant"',
            ),
        ),
        _suffix(
            "suffix_smile",
            " :)",
            (
                "end every reply with a smiley :)",
                'finish the answer with the emoticon ":)"',
                'close with a smiley face ":)"',
                'always add ":)" at the very end',
            ),
        ),
        r(
            "quotes",
            (
                "wrap the whole reply in double quotes",
                "put the answer inside quotation marks",
                'enclose the reply in "quotes"',
                "quote the entire answer with double quotation marks",
            ),
            lambda i, t: f'"{t}"',
            lambda i, o: len(o.strip()) > 2 and o.strip()[0] == o.strip()[-1] == '"',
        ),
        r(
            "brackets",
            (
                "wrap the whole reply in square brackets",
                "put the answer inside [square brackets]",
                "enclose the reply in brackets like [this]",
                "surround the entire answer with [ and ]",
            ),
            lambda i, t: f"[{t}]",
            lambda i, o: len(o.strip()) > 2 and o.strip()[0] == "[" and o.strip()[-1] == "]",
        ),
        r(
            "bold",
            (
                "make the whole reply bold with double asterisks",
                "wrap the answer in ** for bold markdown",
                "write the reply in bold, like **this**",
                "surround the entire answer with ** on both sides",
            ),
            lambda i, t: f"**{t}**",
            lambda i, o: len(o.strip()) > 4 and o.strip().startswith("**") and o.strip().endswith("**"),
        ),
    ]


def _pooled() -> list[Rule]:
    r, geo, maths = (
        Rule,
        _refusal("geography", "Sorry, I can only answer geography questions."),
        _refusal("maths", "Sorry, I can only answer maths questions."),
    )
    y_m_d = lambda i: tuple(int(x) for x in i.value.split("-"))  # noqa: E731
    return [
        r(
            "date_iso",
            (
                "write dates as YYYY-MM-DD",
                "give the date in ISO format, year-month-day",
                "answer with the date as four-digit year, month, day joined by dashes",
                "use the ISO 8601 date format",
            ),
            lambda i, t: i.value,
            _fullmatch(r"\d{4}-\d{2}-\d{2}"),
            "dates",
        ),
        r(
            "date_dmy",
            (
                "write dates as DD/MM/YYYY",
                "give the date as day/month/year with slashes",
                "answer with the date in European numeric form, day first",
                "use the DD/MM/YYYY date format",
            ),
            lambda i, t: "{2:02d}/{1:02d}/{0:04d}".format(*y_m_d(i)),
            _fullmatch(r"\d{2}/\d{2}/\d{4}"),
            "dates",
        ),
        r(
            "date_long",
            (
                "write dates as day, month name, year, like 5 March 2021",
                "give the date with the day first and the month spelled out",
                "answer with the date in the British long form",
                "use the format 'D Month YYYY' for dates",
            ),
            lambda i, t: f"{y_m_d(i)[2]} {MONTHS[y_m_d(i)[1] - 1]} {y_m_d(i)[0]}",
            _fullmatch(rf"\d{{1,2}} ({_MONTH_RX}) \d{{4}}"),
            "dates",
        ),
        r(
            "num_words",
            (
                "write numbers as words, not digits",
                "spell out the number in letters",
                "answer with the number written in English words",
                "never use digits; give the number as a word",
            ),
            lambda i, t: NUMBER_WORDS[int(i.value)],
            lambda i, o: _bare(o) in NUMBER_WORDS,
            "maths",
        ),
        r(
            "num_digits",
            (
                "answer with the number in digits only",
                "reply with just the numeral",
                "give only the number, written with digits",
                "output the bare number and nothing else",
            ),
            lambda i, t: i.value,
            _fullmatch(r"\d+"),
            "maths",
        ),
        r(
            "num_decimals",
            (
                "give numbers with two decimal places",
                "write the number with exactly two decimals, like 7.00",
                "answer with the number formatted to two decimal places",
                "always show two digits after the decimal point",
            ),
            lambda i, t: f"{int(i.value)}.00",
            _fullmatch(r"\d+\.\d{2}"),
            "maths",
        ),
        r(
            "unit_abbrev",
            (
                'give lengths with the abbreviated unit, like "300 cm"',
                "answer with the number and the unit symbol cm",
                "write the quantity followed by cm",
                "use the short unit form: number then cm",
            ),
            lambda i, t: f"{i.value} cm",
            _fullmatch(r"\d+ cm"),
            "units",
        ),
        r(
            "unit_full",
            (
                'give lengths with the unit written in full, like "300 centimetres"',
                "answer with the number and the word centimetres",
                "write the quantity followed by the full unit name",
                "spell out the unit: number then centimetres",
            ),
            lambda i, t: f"{i.value} centimetres",
            _fullmatch(r"\d+ centimetres"),
            "units",
        ),
        r(
            "refuse_geo",
            (
                "only answer geography questions; otherwise say "
                '"Sorry, I can only answer geography questions."',
                "you are a geography helper: refuse anything else with a fixed apology",
                "answer questions about countries and capitals; for other topics reply "
                '"Sorry, I can only answer geography questions."',
                "stay on the topic of geography and politely decline other questions",
            ),
            *geo,
        ),
        r(
            "refuse_maths",
            (
                'only answer maths questions; otherwise say "Sorry, I can only answer maths questions."',
                "you are a maths tutor: refuse anything else with a fixed apology",
                "answer arithmetic questions; for other topics reply "
                '"Sorry, I can only answer maths questions."',
                "stay on the topic of maths and politely decline other questions",
            ),
            *maths,
        ),
        r(
            "sentiment",
            (
                "classify the sentiment of the text as positive or negative",
                "reply only with the label positive or negative",
                "say whether the review is positive or negative, one word",
                "label the text's sentiment: positive or negative",
            ),
            lambda i, t: i.value,
            _one_of({"positive", "negative"}),
            "sentiment",
        ),
        r(
            "topic",
            (
                "classify the text's topic as sports, food or weather",
                "reply only with one label: sports, food or weather",
                "name the subject of the sentence: sports, food or weather",
                "label the text with its topic (sports, food, weather)",
            ),
            lambda i, t: i.value,
            _one_of({"sports", "food", "weather"}),
            "topic",
        ),
        r(
            "yesno",
            (
                "answer only yes or no",
                "reply with a single yes or no",
                "give a yes/no answer and nothing more",
                "respond with just Yes or No",
            ),
            lambda i, t: i.answer,
            _one_of({"yes", "no"}),
            "yesno",
        ),
    ]


RULES: dict[str, Rule] = {rule.name: rule for rule in _content() + _style() + _pooled()}
STYLE: frozenset[str] = frozenset(rule.name for rule in _style())  # rules that transform any answer
