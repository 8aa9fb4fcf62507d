"""A document's key-value memory as a LoRA, in closed form: one read of the document, no training.

The base model reads the document (as the hypernetwork's encoder does: each chunk a chat user turn).
At every content position ``t`` of layers ``cfg.layers`` the input of ``mlp.down_proj`` is a *key*
``k_t``; the *value* is the direction that raises the logit of the document's next token ``y_{t+1}``
through the final norm (``g ⊙ W_U[y]``, unit length, scaled by ``cfg.scale`` times the layer's mean
residual norm). The update of ``down_proj`` is the ridge solution of MEMIT's batch edit (Meng et al.,
2023):

    ΔWᵀ = (KᵀK + λ·m·C)⁻¹ Kᵀ V

where ``C`` is the second moment of the same keys on general text read as chat exchanges
(``key_statistics``): the update maps the document's keys to its values while staying small on keys
that ordinary conversation produces, which is what keeps the adapter from disturbing everything else.
``m`` is the tokens of one chunk (the document's ``n`` tokens over its chunks; ``ridge_per: token``
takes ``n``): MEMIT's ``C`` term does not grow with the number of edits, and weighing it by all of a long
document's tokens held each chunk's own key directions back harder the longer the document (four-chunk
documents: docs/eval-memory.md). ``ΔW`` has rank at most ``n`` and is truncated by SVD to ``cfg.rank``
per chunk (at most ``cfg.max_rank`` in all).

Why it helps: after reading a sentence the model sees the same local context again when a question
quotes it, and the memory adds the document's continuation there. It is document-specific by
construction (another document's memory holds other continuations), which the trained hypernetwork is
not yet on real text (docs/hypernet-smollm2.md). It knows nothing of questions: the first token of an
answer, predicted after the assistant header, is rarely a stored context. The measured gains and the
choice of defaults are in docs/eval-memory.md. ``HypernetGenerator`` adds the memory to the network's
adapter by default, reading it from the network's own feature pass (``recording``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from hypernet.base_model import BaseModel, chat_ids
from hypernet.features import chat_chunks
from hypernet.lora import LoraWeights, target_linears

TARGET = "down_proj"


@dataclass(frozen=True)
class MemoryConfig:
    """Which layers hold the memory and how strongly (defaults: docs/eval-memory.md)."""

    layers: tuple[int, ...] | None = None  # None: every second layer from 2/3 of the depth (memory_layers)
    ridge: float = 30.0  # λ: weight of general-text keys against the document's (ridge_per)
    # "chunk": λ times the tokens of one chunk, so a longer document is not held back harder (measured:
    # docs/eval-memory.md, "Long documents"); "token": λ times all the document's tokens (before)
    ridge_per: str = "chunk"
    scale: float = 0.08  # value length as a fraction of the layer's mean residual norm
    rank: int = 64  # per chunk of the document
    max_rank: int = 256  # in all: keeps a max_chunks document within vLLM's largest LoRA rank (512)
    chunk_tokens: int = 256
    general_tokens: int = 6000  # tokens of general text behind C
    general_as: str = "exchange"  # how C's general text is read: "exchange" (chat) or "text" (a document)

    def __post_init__(self) -> None:
        checks = {
            "layers": self.layers is None or (bool(self.layers) and min(self.layers) >= 0),
            "ridge": self.ridge > 0,
            "scale": self.scale >= 0,
            "rank": self.rank >= 1,
            "max_rank": self.max_rank >= 1,
            "chunk_tokens": self.chunk_tokens >= 16,
            "general_tokens": self.general_tokens >= 256,
            "general_as": self.general_as in ("text", "exchange"),
            "ridge_per": self.ridge_per in ("chunk", "token"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"MemoryConfig: invalid value for {', '.join(bad)}: {self}")

    def to_dict(self) -> dict:
        return asdict(self) | {"layers": None if self.layers is None else list(self.layers)}

    @classmethod
    def from_dict(cls, data: dict) -> MemoryConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown memory option(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        data = dict(data)
        if data.get("layers") is not None:
            data["layers"] = tuple(int(x) for x in data["layers"])
        return cls(**data)


def memory_layers(n_layers: int, layers: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """``layers`` as given, or by default every second layer from 2/3 of the depth to the second-to-last
    (SmolLM2-135M: 20, 22, 24, 26, 28; measured against the last layers alone and a deeper range in
    docs/eval-memory.md): late enough that keys carry the next-token context, early enough that the
    layers after them still turn the stored direction into the token."""
    if layers is not None:
        return tuple(layers)
    return tuple(range(round(n_layers * 2 / 3), n_layers - 1, 2)) or (n_layers - 1,)


def memory_paths(base: BaseModel, layers: tuple[int, ...] | None) -> list[str]:
    """Module paths of ``down_proj`` at the memory layers (in layer order); a missing layer is an error."""
    by_layer = {int(p.split(".")[-3]): p for p in target_linears(base.model, TARGET)}
    layers = memory_layers(len(by_layer), layers)
    missing = [layer for layer in layers if layer not in by_layer]
    if missing:
        raise ValueError(f"memory layers {missing} do not exist: the model has {len(by_layer)} layers")
    return [by_layer[layer] for layer in layers]


@dataclass
class Reads:
    """What the memory keeps of each forward pass over a chunk: per memory layer, the ``down_proj``
    inputs ``[T, d_in]`` of the first sequence and the mean norm of the layer's output residual."""

    keys: dict[str, list[Tensor]]
    norms: dict[str, list[float]]


@contextmanager
def recording(base: BaseModel, paths: list[str]) -> Iterator[Reads]:
    """Record every forward pass of ``base.model`` inside the block (hooks; nothing else changes), so the
    hypernetwork's feature pass can serve the memory too instead of a second read of the document."""
    modules = dict(base.model.named_modules())
    reads = Reads({p: [] for p in paths}, {p: [] for p in paths})

    def keep_keys(p: str):
        return lambda module, inputs, output: reads.keys[p].append(inputs[0][0].float())

    def keep_norm(p: str):
        def hook(module, inputs, output) -> None:
            residual = output[0] if isinstance(output, tuple) else output
            reads.norms[p].append(residual[0].float().norm(dim=-1).mean().item())

        return hook

    hooks = [modules[p].register_forward_hook(keep_keys(p)) for p in paths]
    hooks += [modules[p.rsplit(".mlp.", 1)[0]].register_forward_hook(keep_norm(p)) for p in paths]
    try:
        yield reads
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def _forward(base: BaseModel, ids: list[int]) -> None:
    # the decoder alone: the memory reads layer inputs, never the logits
    base.model.get_decoder()(input_ids=torch.tensor([ids], device=base.device), use_cache=False)


def key_statistics(base: BaseModel, cfg: MemoryConfig) -> dict[str, Tensor]:
    """``C⁻¹`` per memory layer, ``C`` the uncentred second moment of ``down_proj``'s inputs on general
    text (with a jitter of 1e-6 of its mean diagonal).

    The text is the packaged Python-documentation corpus (``hypernet.corpus``, PSF licence), by default
    read as chat exchanges (``_general_ids``), so positions where an answer starts are among the keys
    the update must leave alone; the QA gates' general-text set is not used, so the preservation gate
    still measures text the memory never saw. Computed once per process and configuration (~6,000
    tokens through the base model: seconds on a CPU).
    """
    key = (base.weights_sha256, cfg.layers, cfg.chunk_tokens, cfg.general_tokens, cfg.general_as)
    if key not in _STATISTICS:
        _STATISTICS.clear()  # one base model per process in practice: keep memory bounded
        _STATISTICS[key] = _statistics(base, cfg)
    return _STATISTICS[key]


_STATISTICS: dict[tuple, dict[str, Tensor]] = {}


def _general_ids(base: BaseModel, text: str, cfg: MemoryConfig) -> list[int]:
    """A general text as the memory will meet it: read as a document (``text``), or as a chat exchange
    (``exchange``: its first words as the user's turn, the next ones as the assistant's answer), so that
    the ridge also holds still the positions where answers start."""
    if cfg.general_as == "text":
        return chat_ids(base.tokenizer, text)[0][: cfg.chunk_tokens]
    words = text.split()
    cut = min(len(words) // 2, 60)
    prompt, answer = chat_ids(base.tokenizer, " ".join(words[:cut]), " ".join(words[cut : cut + 60]))
    return (prompt + answer)[: cfg.chunk_tokens]


def _statistics(base: BaseModel, cfg: MemoryConfig) -> dict[str, Tensor]:
    from hypernet.corpus import load_corpus

    paths = memory_paths(base, cfg.layers)
    sums: dict[str, Tensor] = {}
    seen = 0
    for doc in load_corpus():
        ids = _general_ids(base, doc.text, cfg)
        with recording(base, paths) as reads:
            _forward(base, ids)
        for p in paths:
            (keys,) = reads.keys[p]
            sums[p] = sums.get(p, 0) + keys.T @ keys
        seen += len(ids)
        if seen >= cfg.general_tokens:
            break
    out = {}
    for p, total in sums.items():
        C = (total / seen).double()
        C.diagonal().add_(1e-6 * C.diagonal().mean())  # a few thousand tokens may leave C near-singular
        out[p] = torch.linalg.inv(C).float().cpu()
    return out


def content_positions(tokenizer, ids: list[int], frame: tuple[int, int] | None = None) -> Tensor:
    """Positions of a chat-wrapped chunk (``chat_ids(tokenizer, text)[0]``) whose next token is content;
    ``frame`` is ``chat_frame(tokenizer)``, passed in when many chunks share it."""
    head, around = frame or chat_frame(tokenizer)
    return torch.arange(head - 1, head - 1 + len(ids) - around)


def chat_frame(tokenizer) -> tuple[int, int]:
    """Tokens before the user's text in ``chat_ids``, and before plus after it."""
    frame = chat_ids(tokenizer, "")[0]  # header + footer: chat_ids encodes the three parts separately
    probe = chat_ids(tokenizer, "x")[0]
    head = next(i for i, (a, b) in enumerate(zip(probe, frame + [-1], strict=False)) if a != b)
    return head, len(frame)


def memory_lora(
    base: BaseModel, text: str, cfg: MemoryConfig, stats: dict[str, Tensor], max_chunks: int | None = None
) -> LoraWeights:
    """The document's memory on ``down_proj`` at the memory layers: rank ``cfg.rank`` per chunk read
    (the first ``max_chunks`` chunks when given). Raises ValueError when the document has no tokens."""
    if not text.strip():
        raise ValueError("document is empty: the memory has nothing to read")
    chunks = chat_chunks(base.tokenizer, text, cfg.chunk_tokens)[:max_chunks]
    with recording(base, memory_paths(base, cfg.layers)) as reads:
        for ids in chunks:
            _forward(base, ids)
    return memory_from_reads(base, chunks, reads, cfg, stats)


@torch.no_grad()
def memory_from_reads(
    base: BaseModel, chunks: list[list[int]], reads: Reads, cfg: MemoryConfig, stats: dict[str, Tensor]
) -> LoraWeights:
    """The memory of the chunks whose passes ``reads`` recorded (in order): rank ``cfg.rank`` per chunk, at
    most ``cfg.max_rank``."""
    frame = chat_frame(base.tokenizer)
    positions = [content_positions(base.tokenizer, ids, frame) for ids in chunks]
    targets = torch.cat([torch.tensor(ids)[pos + 1] for ids, pos in zip(chunks, positions, strict=True)])
    direction = _value_directions(base, targets.to(base.device))  # [n, d_out], unit rows
    rank = min(cfg.rank * len(chunks), cfg.max_rank, direction.shape[0])
    # ridge_factors weighs C by λ·n; per chunk, that is λ times the mean tokens of a chunk
    ridge = cfg.ridge / len(chunks) if cfg.ridge_per == "chunk" else cfg.ridge
    A, B = {}, {}
    for p, passes in reads.keys.items():
        if len(passes) != len(chunks):
            raise ValueError(f"memory: {len(passes)} recorded passes for {len(chunks)} chunks")
        K = torch.cat([keys[pos] for keys, pos in zip(passes, positions, strict=True)])  # [n, d_in]
        V = direction * (cfg.scale * sum(reads.norms[p]) / len(reads.norms[p]))
        B[p], A[p] = ridge_factors(K, V, stats[p].to(K.device), ridge, rank)
    return LoraWeights(A, B, 1.0).detach()


def _value_directions(base: BaseModel, next_tokens: Tensor) -> Tensor:
    """Unit residual directions raising each token's logit through the final norm's gain."""
    unembed = base.model.get_output_embeddings().weight
    gain = base.model.get_decoder().norm.weight
    v = unembed[next_tokens].float() * gain.float()
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def ridge_factors(K: Tensor, V: Tensor, C_inv: Tensor, ridge: float, rank: int) -> tuple[Tensor, Tensor]:
    """B ``[d_out, r]`` and A ``[r, d_in]``: the rank-r truncation of ΔW = Vᵀ K (KᵀK + λnC)⁻¹.

    Solved in the document's n dimensions rather than the keys' d (push-through identity):
    ΔW = Yᵀ P with P = K C⁻¹ and Y = (λn I + P Kᵀ)⁻¹ V (a Cholesky solve), about n·d² work instead of
    d³. The truncation is ``truncated_svd``'s."""
    n = K.shape[0]
    P = K @ C_inv  # [n, d_in]
    G = P @ K.T
    G.diagonal().add_(ridge * n)
    Y = torch.cholesky_solve(V, torch.linalg.cholesky(G))  # [n, d_out]
    return truncated_svd(Y.T, P, rank)


def truncated_svd(
    L: Tensor, R: Tensor, rank: int, oversample: int = 16, power_iterations: int = 2
) -> tuple[Tensor, Tensor]:
    """B ``[m, r]`` and A ``[r, d]`` with B A the best rank-r approximation of L R (``L`` ``[m, n]``,
    ``R`` ``[n, d]``), never forming L R.

    A randomized SVD (Halko, Martinsson and Tropp, 2011: a range finder over ``rank + oversample``
    columns with power iterations, seeded so that a document always gives the same adapter). On real
    documents its error was within 1% of the exact truncation's for about half the time of the exact
    QR + SVD (docs/eval-memory.md); when the sketch would be as wide as the matrix, the SVD is exact.
    ``torch.svd_lowrank`` needs the product formed and draws from the global generator."""
    width = rank + oversample
    if width >= min(L.shape[0], R.shape[0]):
        Q, T = torch.linalg.qr(R.T)  # [d, n], [n, n]
        U, S, Wh = torch.linalg.svd(L @ T.T, full_matrices=False)
        return U[:, :rank] * S[:rank], Wh[:rank] @ Q.T
    seed = torch.Generator(device=R.device).manual_seed(0)
    Z = L @ (R @ torch.randn(R.shape[1], width, generator=seed, device=R.device, dtype=R.dtype))
    for _ in range(power_iterations):
        Z = L @ (R @ (R.T @ (L.T @ torch.linalg.qr(Z)[0])))
    Q = torch.linalg.qr(Z)[0]  # [m, width]: an orthonormal basis of L R's leading range
    U, S, Wh = torch.linalg.svd((Q.T @ L) @ R, full_matrices=False)
    return (Q @ U[:, :rank]) * S[:rank], Wh[:rank]
