"""The activation encoder: what the hypernetwork sees of a document.

The frozen base model reads the document as a chat user turn; the input of every decoder layer (the
residual stream before layer i, ``hidden_states[i]`` for i < L) is kept and LayerNorm'd per token
without affine parameters. The norm matters: residual norms range from ~3 to ~600 across SmolLM2's
layers (docs/hypernet-design.md), and normalised values are safe in fp16.

Long documents are split into chunks of ``chunk_tokens`` content tokens, each encoded as its own user
turn (D2L's ``combine_lora`` semantics: one LoRA per chunk). Features are cached in fp16, in memory and
optionally on disk as safetensors, keyed by the base model's weights sha256, the chunk size and the
document's sha256, so a training run over many epochs pays the base-model pass once per document.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from hypernet.base_model import BaseModel, chat_ids


@dataclass(frozen=True)
class FeatureConfig:
    chunk_tokens: int = 256  # document content tokens per chunk
    memory_bytes: int = 4 << 30  # in-memory cache bound (least recently used entries leave first)


class FeatureEncoder:
    """Turns document text into per-chunk features ``[L, T, H]`` (fp16, CPU)."""

    def __init__(self, base: BaseModel, cfg: FeatureConfig | None = None, cache_dir: Path | None = None):
        self.base = base
        self.cfg = cfg or FeatureConfig()
        tag = f"{base.weights_sha256[:16]}-c{self.cfg.chunk_tokens}"
        self.cache_dir = Path(cache_dir) / tag if cache_dir else None
        self._memory: OrderedDict[str, list[Tensor]] = OrderedDict()
        self._memory_bytes = 0

    @property
    def n_layers(self) -> int:
        return self.base.model.config.num_hidden_layers

    def chunk_ids(self, text: str) -> list[list[int]]:
        """Token ids of each chunk, wrapped as a chat user turn."""
        return chat_chunks(self.base.tokenizer, text, self.cfg.chunk_tokens)

    def encode(self, text: str) -> list[Tensor]:
        """Features of every chunk of ``text``: a list of ``[L, T_chunk, H]`` fp16 tensors."""
        key = hashlib.sha256(text.encode()).hexdigest()
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        chunks = self._load(key)
        if chunks is None:
            chunks = [self.encode_ids(ids) for ids in self.chunk_ids(text)]
            self._store(key, chunks)
        self._remember(key, chunks)
        return chunks

    @torch.no_grad()
    def encode_ids(self, ids: list[int]) -> Tensor:
        """Layer inputs over one token sequence, normalised per token: ``[L, T, H]`` fp16."""
        # the decoder alone: layer inputs are all the features need, and the LM head over a 49k vocabulary
        # is about a fifth of the pass's time (docs/eval-memory.md)
        decoder = self.base.model.get_decoder()
        input_ids = torch.tensor([ids], device=self.base.device)
        out = decoder(input_ids=input_ids, output_hidden_states=True, use_cache=False)
        states = torch.stack(out.hidden_states[: self.n_layers], dim=0)[:, 0]  # [L, T, H]
        states = F.layer_norm(states.float(), states.shape[-1:])
        return states.to(torch.float16).cpu()

    def _remember(self, key: str, chunks: list[Tensor]) -> None:
        self._memory[key] = chunks
        self._memory_bytes += sum(c.numel() * c.element_size() for c in chunks)
        while self._memory_bytes > self.cfg.memory_bytes and len(self._memory) > 1:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= sum(c.numel() * c.element_size() for c in old)

    def _path(self, key: str) -> Path | None:
        return self.cache_dir / f"{key}.safetensors" if self.cache_dir else None

    def _load(self, key: str) -> list[Tensor] | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        tensors = load_file(path)
        return [tensors[f"chunk{i}"] for i in range(len(tensors))]

    def _store(self, key: str, chunks: list[Tensor]) -> None:
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({f"chunk{i}": c.contiguous() for i, c in enumerate(chunks)}, str(tmp))
        tmp.replace(path)


def chat_chunks(tokenizer, text: str, chunk_tokens: int) -> list[list[int]]:
    """``text`` cut into chunks of ``chunk_tokens`` content tokens, each wrapped as a chat user turn; an
    empty text gives one empty turn."""
    content = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [content[i : i + chunk_tokens] for i in range(0, max(len(content), 1), chunk_tokens)]
    return [chat_ids(tokenizer, tokenizer.decode(piece))[0] for piece in pieces]


def pad_features(features: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack ``[L, T_i, H]`` tensors into ``[N, L, T, H]`` (zero-padded) and a ``[N, T]`` bool mask."""
    n, (L, _, H) = len(features), features[0].shape
    T = max(f.shape[1] for f in features)
    out = features[0].new_zeros(n, L, T, H)
    mask = torch.zeros(n, T, dtype=torch.bool)
    for i, f in enumerate(features):
        out[i, :, : f.shape[1]] = f
        mask[i, : f.shape[1]] = True
    return out, mask
