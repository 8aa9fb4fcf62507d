"""Routing a question to the documents that can answer it: BM25 over the parsed text, or embeddings.

- ``bm25``: Okapi BM25 from ``bm25s`` (sparse-matrix BM25, maintained, no dependency beyond numpy/scipy),
  English stop words removed, no stemmer.
- ``embedding``: the frozen base model's last hidden state, mean-pooled over the first ``EMBED_TOKENS``
  tokens and L2-normalised; cosine similarity. No extra model, nothing downloaded.

Which routes better, and how both degrade as distractor documents are added, is measured by
``instill eval-kb`` (docs/eval-kb.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from hypernet.base_model import BaseModel

RouterKind = Literal["bm25", "embedding"]
EMBED_TOKENS = 256
EMBED_BATCH = 8


class Router(Protocol):
    kind: str

    def scores(self, question: str) -> np.ndarray:
        """One score per indexed document, higher is better."""
        ...


def rank(router: Router, question: str, k: int) -> list[tuple[int, float]]:
    """The ``k`` best documents as (index, score), best first; ties keep index order."""
    scores = router.scores(question)
    order = np.argsort(-scores, kind="stable")[: max(0, k)]
    return [(int(i), float(scores[i])) for i in order]


class BM25Router:
    kind = "bm25"

    def __init__(self, texts: Sequence[str]) -> None:
        import bm25s

        self._bm25s = bm25s
        self.n = len(texts)
        self.index = bm25s.BM25()
        if texts:
            tokens = bm25s.tokenize(list(texts), stopwords="en", show_progress=False)
            self.index.index(tokens, show_progress=False)

    def scores(self, question: str) -> np.ndarray:
        if self.n == 0:
            return np.zeros(0)
        words = self._bm25s.tokenize([question], stopwords="en", return_ids=False, show_progress=False)[0]
        if not words:
            return np.zeros(self.n)
        return np.asarray(self.index.get_scores(words), dtype=np.float64)


class EmbeddingRouter:
    kind = "embedding"

    def __init__(self, texts: Sequence[str], base: BaseModel) -> None:
        self.base = base
        self.matrix = self.embed(texts) if texts else np.zeros((0, 1))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        tok = self.base.tokenizer
        # The decoder alone: its last hidden state is the causal LM's hidden_states[-1] exactly (equal
        # tensors on SmolLM2), without the vocabulary projection (about a quarter of the CPU time).
        model = self.base.model.get_decoder()
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), EMBED_BATCH):
                ids = [
                    tok(t, add_special_tokens=False)["input_ids"][:EMBED_TOKENS] or [0]
                    for t in texts[start : start + EMBED_BATCH]
                ]
                width = max(len(i) for i in ids)
                x = torch.tensor([i + [0] * (width - len(i)) for i in ids], device=self.base.device)
                mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=x.device)
                hidden = model(input_ids=x, attention_mask=mask).last_hidden_state
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
        return np.concatenate(out)

    def scores(self, question: str) -> np.ndarray:
        if len(self.matrix) == 0:
            return np.zeros(0)
        return self.matrix @ self.embed([question])[0]


def make_router(kind: RouterKind, texts: Sequence[str], base: BaseModel | None = None) -> Router:
    if kind == "bm25":
        return BM25Router(texts)
    if kind == "embedding":
        if base is None:
            raise ValueError("the embedding router needs the base model")
        return EmbeddingRouter(texts, base)
    raise ValueError(f"unknown router {kind!r} (bm25 or embedding)")
