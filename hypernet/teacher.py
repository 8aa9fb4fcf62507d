"""Student batches and the in-context teacher's targets for hypernetwork training, cached per document.

Student = base model + generated adapter, seeing only the question; teacher = the base model with the
document before the question. The teacher's top-k log-probabilities on every gold answer token are
computed once per document, the document running once for all its questions (a shared KV-cache prefix,
``hypernet.batching``), and kept in memory and on disk as safetensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from hypernet.base_model import BaseModel, chat_ids
from hypernet.batching import pad_id, right_pad, shared_prefix_logprobs
from hypernet.data import Document, student_prompt, teacher_prompt
from hypernet.lora import LoraWeights, applied


@dataclass
class Batch:
    """Questions of several documents as one right-padded student batch."""

    input_ids: Tensor  # [S, T]
    attention_mask: Tensor  # [S, T]
    predict: Tensor  # [S, T] bool: the position predicts an answer token
    target: Tensor  # [M] answer token ids, in (sequence, position) order
    seq: Tensor  # [M] sequence of each answer token
    doc: Tensor  # [S] document (index into the batch's documents) of each sequence

    def doubled(self) -> Batch:
        """The batch twice over (own adapters first, shuffled ones second)."""
        S = self.input_ids.shape[0]
        return Batch(
            self.input_ids.repeat(2, 1),
            self.attention_mask.repeat(2, 1),
            self.predict.repeat(2, 1),
            self.target.repeat(2),
            torch.cat([self.seq, self.seq + S]),
            self.doc.repeat(2),
        )


def make_batch(tokenizer, docs: list[Document]) -> Batch:
    """Student prompts + gold answers of every question of ``docs``, document-major."""
    seqs, doc_index = [], []
    for j, d in enumerate(docs):
        for q in d.questions:
            seqs.append(chat_ids(tokenizer, student_prompt(q.text), q.answer))
            doc_index.append(j)
    ids, mask, predict = right_pad(seqs, pad_id(tokenizer))
    target = [t for _, answer in seqs for t in answer]
    seq = [i for i, (_, answer) in enumerate(seqs) for _ in answer]
    return Batch(ids, mask, predict, torch.tensor(target), torch.tensor(seq), torch.tensor(doc_index))


def answer_logprobs(model: nn.Module, batch: Batch, adapter: LoraWeights | None) -> Tensor:
    """Log-probs ``[M, V]`` at the positions that predict answer tokens (only those reach the LM head)."""
    dev = next(model.parameters()).device
    with applied(model, adapter):
        logits = model(
            input_ids=batch.input_ids.to(dev),
            attention_mask=batch.attention_mask.to(dev),
            logits_to_keep=batch.predict.to(dev),
            use_cache=False,
        ).logits  # [M, V]
    return F.log_softmax(logits.float(), dim=-1)


@dataclass
class Teacher:
    """The in-context teacher on one document's answer tokens."""

    topk_ids: Tensor  # [M, k]
    topk_logp: Tensor  # [M, k], renormalised over the top-k
    gold_logp: Tensor  # [M] log-prob of the gold answer token


class TeacherCache:
    """Teacher targets per document (memory, then disk, then one base-model pass)."""

    def __init__(self, base: BaseModel, top_k: int, cache_dir: Path | None):
        self.base, self.top_k = base, top_k
        self.dir = Path(cache_dir) / f"{base.weights_sha256[:16]}-k{top_k}-v2" if cache_dir else None
        self._memory: dict[str, Teacher] = {}

    def key(self, doc: Document) -> str:
        probes = [(q.text, q.answer) for q in doc.questions]
        return hashlib.sha256(json.dumps([doc.text, probes]).encode()).hexdigest()

    def get(self, doc: Document) -> Teacher:
        key = self.key(doc)
        if key not in self._memory:
            path = self.dir / f"{key}.safetensors" if self.dir else None
            if path is not None and path.is_file():
                t = load_file(str(path))
            else:
                t = self.compute(doc)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    save_file(t, str(path.with_suffix(".tmp")))
                    path.with_suffix(".tmp").replace(path)
            self._memory[key] = Teacher(t["topk_ids"], t["topk_logp"], t["gold_logp"])
        return self._memory[key]

    @torch.no_grad()
    def compute(self, doc: Document) -> dict[str, Tensor]:
        """One pass over the document, then every question on its cached keys and values."""
        tok = self.base.tokenizer
        seqs = [chat_ids(tok, teacher_prompt(doc.text, q.text), q.answer) for q in doc.questions]
        logp = shared_prefix_logprobs(self.base.model, seqs, pad_id(tok)).cpu()  # [M, V]
        target = torch.tensor([t for _, answer in seqs for t in answer])
        vals, ids = logp.topk(min(self.top_k, logp.shape[-1]), dim=-1)
        return {
            "topk_ids": ids.contiguous(),
            "topk_logp": (vals - vals.logsumexp(-1, keepdim=True)).contiguous(),
            "gold_logp": logp.gather(1, target[:, None])[:, 0].contiguous(),
        }

    def for_batch(self, docs: list[Document]) -> Teacher:
        parts = [self.get(d) for d in docs]
        return Teacher(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Teacher)))
