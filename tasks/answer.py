"""Answering from the knowledge base: production adapters by alias, routing, a strategy, streamed tokens.

``KnowledgeBaseView`` reads what is live from the registry (the alias is the truth: ``models:/<doc
model>@production``) and the catalog (the document's parsed text and QA metrics), and re-reads it at most
every ``serving.poll_seconds`` (or at once after ``invalidate()``, which the server's MLflow webhook calls),
so a promote or rollback reaches the next answer without a restart. Adapter folders are downloaded from
MLflow once into ``<home>/serving/adapters/<sha256>/`` and checked against the version's sha256 tag.

``Answerer`` routes a question (tasks.route), applies the strategy (top-1 adapter, top-k combined with
tasks.combine, the top-k texts in the prompt, or both) and streams the answer from the frozen base model.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.aliases import PRODUCTION, model_name
from tasks.catalog import queries
from tasks.runtime import Runtime, runtime
from tasks.settings import KIND_TAG, DocumentKind

if TYPE_CHECKING:
    from hypernet.base_model import BaseModel
    from hypernet.lora import LoraWeights
    from tasks.route import Router

log = logging.getLogger(__name__)

STRATEGIES = ("top1", "cat", "linear", "rag", "rag+cat")


class AnswerError(ValueError):
    """A question that cannot be answered as asked (unknown document, nothing in production, too long)."""

    def __init__(self, message: str, code: str = "invalid_request", status: int = 400) -> None:
        super().__init__(message)
        self.code, self.status = code, status


@dataclass(frozen=True)
class LiveDocument:
    label: str  # SOURCE:PATH
    model: str  # the registered model name
    version: str  # the version the alias points at
    sha256: str  # the adapter's sha256 (the version's tag)
    text: str  # the parsed text of the adapter's document version
    title: str | None = None
    qa: dict[str, float | None] = field(default_factory=dict, hash=False, compare=False)
    kind: str = DocumentKind.KNOWLEDGE.value  # an instruction adapter is applied to every answer


def _entry(doc: LiveDocument, score: float | None = None) -> dict[str, Any]:
    return {
        "document": doc.label,
        "model": doc.model,
        "version": doc.version,
        "adapter_sha256": doc.sha256,
        "score": score,
    }


@dataclass
class Plan:
    """What answers one question: the documents, the adapter (or none) and the text in the prompt."""

    strategy: str
    documents: list[LiveDocument]
    scores: list[float | None]
    weights: LoraWeights | None
    context: str | None
    routed: bool
    instructions: list[LiveDocument] = field(default_factory=list)  # applied with the knowledge adapters

    def describe(self) -> list[dict[str, Any]]:
        return [_entry(d, s) for d, s in zip(self.documents, self.scores, strict=True)]

    def describe_instructions(self) -> list[dict[str, Any]]:
        return [_entry(d) for d in self.instructions]


def production_documents(rt: Runtime, alias: str = PRODUCTION) -> list[LiveDocument]:
    """Every live document whose model has ``alias``, as the registry says now."""
    from mlflow.exceptions import MlflowException

    from tasks.registry import SHA_TAG

    docs = []
    with rt.sessions() as session:
        for doc in queries.live_documents(session):
            model = model_name(rt.kb.name, doc.source.name, doc.id)
            try:
                mv = rt.registry.client.get_model_version_by_alias(model, alias)
            except MlflowException:
                continue
            adapter = queries.adapter_registered_as(session, model, str(mv.version))
            text = ""
            qa: dict[str, float | None] = {}
            kind = mv.tags.get(KIND_TAG, DocumentKind.KNOWLEDGE.value)
            if adapter is not None:
                kind = adapter.kind.value
                qa = {f"{r.suite}.{r.metric}": r.value for r in adapter.qa_results}
                uri = adapter.document_version.text_uri
                if uri:
                    text = rt.store.get_bytes(uri).decode("utf-8")
            sha = mv.tags.get(SHA_TAG, "")
            docs.append(LiveDocument(doc.label, model, str(mv.version), sha, text, doc.title, qa, kind))
    return docs


class AdapterCache:
    """Adapter folders by sha256 under ``<home>/serving/adapters``; their weights kept in memory."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.root = rt.settings.home.resolve() / "serving" / "adapters"
        self._weights: dict[str, LoraWeights] = {}
        self._lock = threading.Lock()

    def folder(self, model: str, version: str, sha256: str) -> Path:
        from hypernet.adapter import CONFIG_FILE, adapter_sha256

        target = self.root / sha256
        if (target / CONFIG_FILE).is_file() and adapter_sha256(target) == sha256:
            return target
        fetched = self.rt.registry.download_version(model, version)
        try:
            got = adapter_sha256(fetched)
            if sha256 and got != sha256:
                raise AnswerError(
                    f"{model} v{version}: downloaded adapter has sha256 {got}, tag says {sha256}"
                )
            self.root.mkdir(parents=True, exist_ok=True)
            staging = self.root / f".tmp-{got}-{threading.get_ident()}"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(fetched, staging)
            try:
                staging.rename(self.root / got)
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)  # another process put it there first
        finally:
            shutil.rmtree(fetched.parent, ignore_errors=True)
        return self.root / got

    def weights(self, doc: LiveDocument) -> LoraWeights:
        from hypernet.adapter import load_adapter

        with self._lock:
            if doc.sha256 not in self._weights:
                self._weights[doc.sha256] = load_adapter(self.folder(doc.model, doc.version, doc.sha256))
            return self._weights[doc.sha256]


class KnowledgeBaseView:
    """What is live now, re-read from the registry at most every ``poll_seconds``."""

    def __init__(self, rt: Runtime, alias: str = PRODUCTION, poll_seconds: float | None = None) -> None:
        self.rt, self.alias = rt, alias
        self.poll_seconds = rt.kb.serving.poll_seconds if poll_seconds is None else poll_seconds
        self._docs: list[LiveDocument] | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()
        self.reads = 0  # how many times the registry was read (tests, /health)

    def invalidate(self) -> None:
        # Not 0.0: time.monotonic() counts from boot, so "0" can be less than poll_seconds ago.
        self._read_at = float("-inf")

    def documents(self) -> list[LiveDocument]:
        with self._lock:
            if self._docs is None or time.monotonic() - self._read_at >= self.poll_seconds:
                self._docs = production_documents(self.rt, self.alias)
                self._read_at = time.monotonic()
                self.reads += 1
            return self._docs

    def by_model(self, model: str) -> LiveDocument | None:
        return next((d for d in self.documents() if d.model == model), None)

    def resolve(self, ref: str) -> LiveDocument:
        """A live document from SOURCE:KEY, its current SOURCE:PATH, or its model name."""
        docs = self.documents()
        found = next((d for d in docs if ref in (d.model, d.label)), None)
        if found is None and ":" in ref:
            source_name, key = ref.split(":", 1)
            with self.rt.sessions() as session:
                source = queries.source_by_name(session, source_name)
                doc = None
                if source is not None:
                    doc = queries.document_at(session, source.id, key) or queries.document_by_key(
                        session, source.id, key
                    )
                if doc is not None:
                    model = model_name(self.rt.kb.name, doc.source.name, doc.id)
                    found = next((d for d in docs if d.model == model), None)
        if found is None:
            raise AnswerError(f"no document {ref!r} with a {self.alias} adapter", "document_not_found", 404)
        return found


class Answerer:
    """The base model, the live knowledge base and the strategy: everything `ask` and `serve` share."""

    def __init__(
        self,
        config: str | Path,
        base: BaseModel | None = None,
        *,
        alias: str = PRODUCTION,
        strategy: str | None = None,
        router: str | None = None,
        top_k: int | None = None,
        poll_seconds: float | None = None,
        apply_instruction: bool | None = None,
    ) -> None:
        self.rt = runtime(config)
        serving = self.rt.kb.serving
        self.apply_instruction = serving.apply_instruction if apply_instruction is None else apply_instruction
        self.strategy = strategy or serving.strategy
        if self.strategy not in STRATEGIES:
            raise AnswerError(f"unknown strategy {self.strategy!r}: one of {', '.join(STRATEGIES)}")
        self.router_kind = router or serving.router
        self.top_k = top_k or serving.top_k
        self.serving = serving
        self.base = base if base is not None else self._load_base()
        self.view = KnowledgeBaseView(self.rt, alias, poll_seconds)
        self.cache = AdapterCache(self.rt)
        self.lock = threading.Lock()  # one generation at a time: adapters are hooks on the shared model
        self._router: tuple[tuple[str, ...], Router] | None = None

    def _load_base(self) -> BaseModel:
        import torch

        from hypernet.base_model import load_base_model

        if self.rt.settings.threads > 0:
            torch.set_num_threads(self.rt.settings.threads)
        return load_base_model(
            self.rt.kb.generator.base_model, self.rt.settings.models_dir, device=self.rt.settings.device
        )

    @property
    def name(self) -> str:
        return self.rt.kb.name

    def documents(self) -> list[LiveDocument]:
        """The live knowledge documents: what routing and the strategies choose from."""
        return [d for d in self.view.documents() if d.kind != DocumentKind.INSTRUCTION]

    def instructions(self) -> list[LiveDocument]:
        """The live instruction adapters applied to every answer (none when ``apply_instruction`` is off)."""
        if not self.apply_instruction:
            return []
        return [d for d in self.view.documents() if d.kind == DocumentKind.INSTRUCTION]

    def router(self, docs: Sequence[LiveDocument]) -> Router:
        from tasks.route import make_router

        key = tuple(d.sha256 for d in docs)
        if self._router is None or self._router[0] != key:
            texts = [f"{d.title or ''}\n{d.text}" for d in docs]
            with self.lock:
                self._router = (key, make_router(self.router_kind, texts, self.base))  # type: ignore[arg-type]
        return self._router[1]

    def plan(self, question: str, docs: Sequence[str] | None = None, strategy: str | None = None) -> Plan:
        """Which documents, adapter and context answer ``question`` (``docs``: named, else routed)."""
        from tasks.route import rank

        strategy = strategy or self.strategy
        if strategy not in STRATEGIES:
            raise AnswerError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
        if docs:
            chosen = [self.view.resolve(ref) for ref in docs]
            scores: list[float | None] = [None] * len(chosen)
            routed = False
        else:
            live = self.documents()
            if not live:
                raise AnswerError(
                    f"{self.name}: no document has a {self.view.alias} adapter", "no_documents", 404
                )
            k = 1 if strategy == "top1" else self.top_k
            ranked = rank(self.router(live), question, k)
            chosen = [live[i] for i, _ in ranked]
            scores = [s for _, s in ranked]
            routed = True
        return self.plan_for(strategy, chosen, scores, routed)

    def plan_for(self, strategy: str, chosen: list[LiveDocument], scores: list, routed: bool) -> Plan:
        """The strategy's knowledge adapters and context, with every live instruction adapter applied
        together with them (different modules: both behaviours at once; over `rag`'s prompt alone)."""
        from hypernet.lora import apply_together
        from tasks.combine import combine

        weights = context = None
        if strategy in ("top1", "cat", "linear", "rag+cat"):
            parts = [self.cache.weights(d) for d in (chosen[:1] if strategy == "top1" else chosen)]
            how = "linear" if strategy == "linear" else "cat"
            weights = parts[0] if len(parts) == 1 else combine(parts, how=how)
        if strategy in ("rag", "rag+cat"):
            context = rag_context([d.text for d in chosen], self.serving.rag_max_words)
        instructions = [d for d in self.instructions() if d not in chosen]  # a named one is applied once
        if instructions:
            extra = [self.cache.weights(d).scaled(self.serving.instruction_scale) for d in instructions]
            weights = apply_together(([weights] if weights is not None else []) + extra)
        return Plan(strategy, list(chosen), list(scores), weights, context, routed, instructions)

    def prompt_ids(self, messages: Sequence[dict[str, str]], context: str | None) -> list[int]:
        return chat_prompt_ids(self.base.tokenizer, messages, context)

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return len(self.prompt_ids(messages, None))

    def stream(
        self,
        messages: Sequence[dict[str, str]],
        plan: Plan,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        finish: dict[str, Any] | None = None,
    ) -> Iterator[str]:
        """The answer's text pieces as they are generated; ``finish['reason']`` is set at the end."""
        from transformers import TextIteratorStreamer

        from hypernet.batching import pad_id
        from hypernet.lora import applied

        max_new_tokens = max_new_tokens or self.serving.max_new_tokens
        ids = self.prompt_ids(messages, plan.context)
        tok, model = self.base.tokenizer, self.base.model
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=600)
        state: dict[str, Any] = {}
        sample = temperature is not None and temperature > 0

        def run() -> None:
            import torch

            weights = plan.weights
            if weights is not None and self.base.device != "cpu":
                from hypernet.lora import LoraWeights

                weights = LoraWeights(
                    {k: v.to(self.base.device) for k, v in weights.A.items()},
                    {k: v.to(self.base.device) for k, v in weights.B.items()},
                    weights.scaling,
                )
            try:
                with self.lock, torch.no_grad(), applied(model, weights):
                    x = torch.tensor([ids], device=self.base.device)
                    out = model.generate(
                        input_ids=x,
                        attention_mask=torch.ones_like(x),
                        max_new_tokens=max_new_tokens,
                        do_sample=sample,
                        temperature=temperature if sample else None,
                        top_p=None,
                        top_k=None,
                        eos_token_id=tok.eos_token_id,
                        pad_token_id=pad_id(tok),
                        streamer=streamer,
                    )
                new = out.shape[1] - len(ids)
                state["tokens"] = int(new)
                state["reason"] = (
                    "length" if new >= max_new_tokens and out[0, -1] != tok.eos_token_id else "stop"
                )
            except BaseException as exc:  # surfaced to the reader below
                state["error"] = exc
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if "error" in state:
            raise state["error"]
        if finish is not None:
            finish.update(
                reason=state.get("reason", "stop"), prompt_tokens=len(ids), tokens=state.get("tokens", 0)
            )

    def answer(self, question: str, docs: Sequence[str] | None = None, strategy: str | None = None) -> dict:
        """The whole answer at once (``--json``, tests)."""
        plan = self.plan(question, docs, strategy)
        finish: dict[str, Any] = {}
        text = "".join(self.stream([{"role": "user", "content": question}], plan, finish=finish))
        return {
            "answer": text.strip(),
            "strategy": plan.strategy,
            "routed": plan.routed,
            "adapters": plan.describe(),
            "instructions": plan.describe_instructions(),
            "finish_reason": finish.get("reason"),
        }


def rag_context(texts: Sequence[str], max_words: int) -> str:
    """The documents' texts for the prompt, each cut to its first ``max_words`` words."""
    return "\n\n".join(" ".join(t.split()[:max_words]) for t in texts)


def chat_prompt_ids(tokenizer, messages: Sequence[dict[str, str]], context: str | None) -> list[int]:
    """Token ids of a chat ending with the assistant header; ``context`` goes before the last user message
    (as the CD teacher and the QA gates see a document: ``"{document}\\n\\n{question}"``)."""
    from hypernet.base_model import chat_ids

    msgs = [dict(m) for m in messages]
    last_user = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=None)
    if context and last_user is not None:
        msgs[last_user]["content"] = f"{context}\n\n{msgs[last_user]['content']}"
    if len(msgs) == 1 and msgs[0].get("role") == "user":
        return chat_ids(tokenizer, msgs[0]["content"])[0]  # exactly the adapters' training format
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        ids: list[int] = []
        for m in msgs:
            ids += tokenizer(f"<|im_start|>{m['role']}\n", add_special_tokens=False)["input_ids"]
            ids += tokenizer(m["content"], add_special_tokens=False, split_special_tokens=True)["input_ids"]
            ids += tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"]
        return ids + tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    return list(tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True))
