"""A small real-text corpus, built offline, for training and evaluating Doc-to-LoRA beyond synthetic facts.

Source: the prose of the Python Language Reference and Library Reference topics that CPython ships in
its standard library as ``pydoc_data.topics`` (the text behind ``help("class")``). It is present in
every Python installation, so nothing is downloaded. Licence: the Python documentation is distributed
under the Python Software Foundation License Version 2 (docs.python.org/3/license.html), which permits
copying, modification and redistribution with the PSF's copyright notice retained; the corpus file
records the notice. Caveat: this text is on the public web, so the base model may have seen it in
pre-training; the in-context condition measures what reading it still adds.

Building: each topic's prose paragraphs (code blocks, grammar rules, headings, version notes and
footnotes dropped) are joined into documents of ``min_words``..``max_words`` words within a topic.
The split is by topic (a stable hash of its name), so held-out documents come from topics that no
training document touches. The corpus is frozen in ``hypernet/corpora/python-docs.jsonl`` (built
from Python 3.11.7), because ``pydoc_data`` differs between Python releases.

Probes: held-out evaluation asks, for a sentence of >= 12 words, for the words between its first
third and its middle (``heldout_probes``). Context distillation's own probes (``hypernet.probes``)
show a sentence's first half and train on the second, so no generator ever trained on the evaluation
answer tokens of a document.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from hypernet.data import Document, Question
from hypernet.probes import QUESTION_PREFIX, sentence_probes, split_sentences
from hypernet.spans import knowledge_probes

CORPUS_FILE = Path(__file__).resolve().parent / "corpora" / "python-docs.jsonl"
NOTICE = (
    "Text from the Python documentation (pydoc_data.topics of CPython 3.11.7). Copyright (c) 2001-2023 "
    "Python Software Foundation; All Rights Reserved. Distributed under the PSF License Version 2."
)
_HEADING_RULE = re.compile(r"^[*=\-^~]{3,}$")
_DROP_PREFIXES = ("Changed in version", "New in version", "Deprecated since", "See also", "Note:")
_FOOTNOTE_REF = re.compile(r"\s*\[\d+\]")
_FOOTNOTE = re.compile(r"^\[\d+\]")


class CorpusError(Exception):
    """The corpus file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class CorpusConfig:
    min_words: int = 50
    max_words: int = 160
    heldout_mod: int = 4  # a topic is held out when its hash's first byte % heldout_mod == 0


@dataclass(frozen=True)
class CorpusDocument:
    doc_id: str  # "<topic>-<n>"
    topic: str
    split: str  # train | heldout
    text: str


def topic_split(topic: str, heldout_mod: int = 4) -> str:
    return "heldout" if hashlib.sha256(topic.encode()).digest()[0] % heldout_mod == 0 else "train"


def prose_paragraphs(topic_text: str) -> list[str]:
    """The running-text paragraphs of one pydoc topic, each on one line."""
    out = []
    for block in re.split(r"\n\s*\n", topic_text):
        lines = block.split("\n")
        if not block.strip() or lines[0][:1].isspace():
            continue  # code, grammar, indented lists
        if len(lines) > 1 and _HEADING_RULE.match(lines[1].strip()):
            continue
        text = _FOOTNOTE_REF.sub("", " ".join(line.strip() for line in lines)).replace("**", "")
        if text.startswith(_DROP_PREFIXES) or _FOOTNOTE.match(text):
            continue
        out.append(" ".join(text.split()))
    return out


def build_corpus(topics: dict[str, str], cfg: CorpusConfig | None = None) -> list[CorpusDocument]:
    """Documents of ``min_words``..``max_words`` words from each topic's consecutive paragraphs."""
    cfg = cfg or CorpusConfig()
    docs = []
    for topic in sorted(topics):
        split = topic_split(topic, cfg.heldout_mod)
        for n, text in enumerate(_pack(prose_paragraphs(topics[topic]), cfg)):
            docs.append(CorpusDocument(f"{topic}-{n}", topic, split, text))
    return docs


def _pack(paragraphs: list[str], cfg: CorpusConfig) -> list[str]:
    """Consecutive paragraphs joined up to ``max_words``; runs shorter than ``min_words`` dropped."""
    runs: list[list[str]] = [[]]
    for para in paragraphs:
        if len(para.split()) > cfg.max_words:
            para = _cut_at_sentence(para, cfg.max_words)
        if len(" ".join(runs[-1] + [para]).split()) > cfg.max_words:
            runs.append([])
        runs[-1].append(para)
    texts = [" ".join(run) for run in runs]
    return [t for t in texts if len(t.split()) >= cfg.min_words]


def _cut_at_sentence(text: str, max_words: int) -> str:
    kept: list[str] = []
    for sentence in split_sentences(text):
        if len(" ".join(kept + [sentence]).split()) > max_words:
            break
        kept.append(sentence)
    return " ".join(kept) if kept else " ".join(text.split()[:max_words])


def write_corpus(docs: list[CorpusDocument], path: Path = CORPUS_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"notice": NOTICE})] + [json.dumps(asdict(d), ensure_ascii=False) for d in docs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_corpus(split: str | None = None, path: Path = CORPUS_FILE) -> list[CorpusDocument]:
    """The frozen corpus (one split, or all documents in file order)."""
    try:
        rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()[1:]]
        docs = [CorpusDocument(**row) for row in rows]
    except (OSError, ValueError, TypeError) as exc:
        raise CorpusError(f"real-text corpus {path} is unreadable: {exc}") from exc
    return [d for d in docs if split is None or d.split == split]


def heldout_probes(
    text: str, max_probes: int = 6, seed: int = 0, max_answer_words: int = 8
) -> list[Question]:
    """Evaluation probes: a sentence's first third shown, the words up to its middle expected.

    Only sentences of >= 12 words qualify, so every answer has at least two words. Context
    distillation trains on the second halves (``hypernet.probes.sentence_probes``), never on these.
    """
    sentences = [s for s in split_sentences(text) if len(s.split()) >= 12]
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(sentences)), min(max_probes, len(sentences))))
    probes = []
    for i in chosen:
        words = sentences[i].split()
        third, half = len(words) // 3, len(words) // 2
        answer = " ".join(words[third : min(half, third + max_answer_words)])
        probes.append(Question(QUESTION_PREFIX + " ".join(words[:third]), answer, "continuation"))
    return probes


def corpus_document(doc: CorpusDocument, max_probes: int = 6, seed: int = 0) -> Document:
    """A corpus document with its held-out evaluation probes, as ``hypernet.data.Document``."""
    return Document(doc.doc_id, doc.text, tuple(heldout_probes(doc.text, max_probes, seed)), 0)


def training_documents(n: int, n_probes: int = 3, max_answer_words: int = 12) -> list[Document]:
    """The first ``n`` training-split documents with CD-style probes (first half shown, rest expected)."""
    docs = []
    for doc in load_corpus("train")[:n]:
        probes = sentence_probes(doc.text, n_probes, seed=0, max_answer_words=max_answer_words)
        questions = tuple(Question(p.question, p.answer, "continuation") for p in probes)
        docs.append(Document(f"real-{doc.doc_id}", doc.text, questions, 0))
    return [d for d in docs if d.questions]


# ---------------------------------------------------------------- the package corpus (tasks.corpus builds it)

CORPUS_DOCUMENTS = "documents.jsonl"
CORPUS_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RealDocument:
    """One document of the package corpus (``documents.jsonl``; see ``tasks.corpus``)."""

    doc_id: str
    package: str
    split: str  # train | heldout (whole packages)
    text: str
    n_tokens: int
    title: str = ""


def load_package_corpus(corpus_dir: Path, split: str | None = None) -> tuple[list[RealDocument], str]:
    """The documents of a built corpus (one split or all, file order) and its manifest's sha256."""
    corpus_dir = Path(corpus_dir)
    try:
        manifest = (corpus_dir / CORPUS_MANIFEST).read_bytes()
        docs = []
        with (corpus_dir / CORPUS_DOCUMENTS).open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if split is None or row["split"] == split:
                    docs.append(
                        RealDocument(
                            row["doc_id"], row["package"], row["split"], row["text"], int(row["n_tokens"]),
                            row.get("title", ""),
                        )
                    )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorpusError(
            f"corpus {corpus_dir} is missing or unreadable ({exc}); build it with `instill corpus build`"
        ) from exc
    return docs, hashlib.sha256(manifest).hexdigest()


def probe_document(
    doc_id: str, text: str, n_knowledge: int = 6, n_continuation: int = 2, seed: int = 0
) -> Document:
    """A real document with knowledge probes (``hypernet.spans``) and a few continuation probes.

    Continuation answers are cut to 8 words: they check the adapter on running text, while the span
    probes carry the document's facts. Documents without any probe get an empty question list.
    """
    questions = [Question(p.question, p.answer, p.kind) for p in knowledge_probes(text, n_knowledge, seed)]
    if n_continuation:
        for p in sentence_probes(text, n_continuation, seed=seed, max_answer_words=8):
            questions.append(Question(p.question, p.answer, "continuation"))
    return Document(doc_id, text, tuple(questions), 0)


def main() -> None:  # pragma: no cover - rebuilds the frozen file: python -m hypernet.corpus
    import pydoc_data.topics

    docs = build_corpus(pydoc_data.topics.topics)
    write_corpus(docs)
    held = sum(d.split == "heldout" for d in docs)
    print(f"{len(docs)} documents ({held} held out) written to {CORPUS_FILE}")


if __name__ == "__main__":  # pragma: no cover
    main()
