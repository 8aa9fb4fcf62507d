"""The Doc-to-LoRA hypernetwork: document activations in, a document-specific LoRA out.

After Sakana AI's doc-to-lora (docs/hypernet-design.md), scaled down for SmolLM2-135M:

    features [L, T, H]  (per-layer residual-stream inputs, LayerNorm'd per token: hypernet.features)
      -> Linear H->d + learned layer embedding
      -> Perceiver shared across layers: n_latents latents, n_blocks x (cross-attention + MLP)
      -> r per-layer rank queries cross-attend to the latents
      -> per-layer residual MLP, L2-normalised rank vectors
      -> per-layer linear heads: one row of A (d_in) and one column of B (d_out) per rank
      -> B multiplied by alpha * s_l, s_l initialised to 0: an untrained network changes nothing.

A learned, document-independent bias LoRA (its own rank) is concatenated along rank. Long documents
are chunked: one generated LoRA per chunk, concatenated along rank, the bias added once.

Keeping constant structure out of the generated path (docs/hypernet-design.md). A plain version
collapsed to one constant adapter (own = wrong-document NLL); centring A and B separately killed the
generated path, and the product of centred factors was not centred anyway; only a contrastive margin
between the own and a shuffled document's adapter gave specificity. This implementation therefore:

1. pre-trains the bias LoRA alone (generated path at exactly zero) and then freezes it, so the cheap
   document-independent gain (answer format, value types) is taken before the generated path starts
   and the generated path has no constant left to learn;
2. trains the generated path with the contrastive margin (``hypernet.train``);
3. penalises the shared fraction of the generated PRODUCT, ||mean_i dW_i||^2 / mean_i ||dW_i||^2 over
   the batch (``shared_fraction``), a soft form of centring B·A that is exact, cheap (r x r Gram
   matrices, no dense d_out x d_in update) and leaves inference unchanged: hard product centring
   would need the training-set mean dW at inference, a dense or high-rank correction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypernet.base_model import sha256_files
from hypernet.features import pad_features
from hypernet.lora import LoraWeights, target_linears
from hypernet.network_files import fill_network, read_network, write_network

WEIGHTS_FILE = "hypernet.safetensors"
META_FILE = "hypernet.json"


class CheckpointError(Exception):
    """A hypernetwork checkpoint is missing, malformed or does not fit; the message says which."""


@dataclass
class HypernetConfig:
    # base model geometry (from_base_model reads it from the model)
    module_paths: list[str] = field(default_factory=list)  # target module of each layer, layer order
    d_model: int = 576  # residual-stream width H of the features
    d_in: int = 1536  # target module's input features (down_proj: the FFN width)
    d_out: int = 576  # target module's output features
    target: str = "down_proj"
    base_model_id: str = ""  # the base model this network was built for
    base_weights_sha256: str = ""
    # aggregator (Perceiver shared across layers)
    d: int = 128  # latent width
    n_latents: int = 8
    n_blocks: int = 2  # cross-attention + MLP blocks
    n_heads: int = 4
    mlp_mult: int = 2
    # generated LoRA
    rank: int = 8  # per chunk
    bias_rank: int = 8  # the document-independent bias LoRA
    alpha: float = 0.0  # multiplier on B; 0 means D2L's 2 * rank**1.5
    chunk_tokens: int = 256  # document content tokens per chunk
    # How chunk LoRAs combine: "sum" (D2L: concatenated as they are) or "mean" (each chunk's B scaled by
    # 1/chunks, so a long document's update has the magnitude of one chunk's). Summing made 2- and
    # 4-chunk adapters of a network trained on single chunks far worse than 1-chunk ones
    # (docs/eval-real.md): the document-independent part of every chunk's update adds up.
    chunk_merge: str = "mean"

    def __post_init__(self) -> None:
        if self.alpha == 0.0:
            self.alpha = 2.0 * self.rank**1.5
        if self.d % self.n_heads:
            raise ValueError(f"HypernetConfig: d={self.d} is not divisible by n_heads={self.n_heads}")
        if self.chunk_merge not in ("sum", "mean"):
            raise ValueError(f"HypernetConfig: chunk_merge must be 'sum' or 'mean', got {self.chunk_merge!r}")
        if min(self.rank, self.bias_rank, self.n_latents, self.n_blocks, self.chunk_tokens) < 1:
            raise ValueError(f"HypernetConfig: ranks, latents, blocks and chunk_tokens must be >= 1: {self}")

    @property
    def n_layers(self) -> int:
        return len(self.module_paths)

    @classmethod
    def from_base_model(cls, model: nn.Module, target: str = "down_proj", **overrides: Any) -> HypernetConfig:
        """Geometry from a Llama/Qwen/Gemma-style causal LM: one target linear per decoder layer."""
        linears = target_linears(model, target)
        paths = sorted(linears, key=lambda p: [int(n) for n in re.findall(r"\.(\d+)\.", p)])
        dims = {(linears[p].in_features, linears[p].out_features) for p in paths}
        if len(dims) != 1:
            raise ValueError(f"target {target!r} has different shapes across layers: {sorted(dims)}")
        (d_in, d_out) = dims.pop()
        d_model = model.config.get_text_config().hidden_size
        return cls(module_paths=paths, d_model=d_model, d_in=d_in, d_out=d_out, target=target, **overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HypernetConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"HypernetConfig: unknown field(s) {unknown}")
        return cls(**data)


# ---------------------------------------------------------------- building blocks


class CrossAttention(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d, d, bias=False)
        self.kv = nn.Linear(d, 2 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor, ctx: Tensor, mask: Tensor | None) -> Tensor:
        (B, Q, d), T, h = x.shape, ctx.shape[1], self.n_heads
        q = self.q(x).view(B, Q, h, d // h).transpose(1, 2)  # [B, h, Q, d/h]
        k, v = self.kv(ctx).view(B, T, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 x [B, h, T, d/h]
        attn_mask = mask[:, None, None, :] if mask is not None else None  # [B, 1, 1, T]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, h, Q, d/h]
        return self.out(y.transpose(1, 2).reshape(B, Q, d))


class Block(nn.Module):
    """Pre-LN cross-attention from queries to a context, then an MLP."""

    def __init__(self, d: int, n_heads: int, mlp_mult: int):
        super().__init__()
        self.ln_q, self.ln_ctx, self.ln_mlp = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CrossAttention(d, n_heads)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_mult * d), nn.GELU(), nn.Linear(mlp_mult * d, d))

    def forward(self, x: Tensor, ctx: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_q(x), self.ln_ctx(ctx), mask)
        return x + self.mlp(self.ln_mlp(x))


# ---------------------------------------------------------------- the hypernetwork


class Hypernet(nn.Module):
    """Features ``[N, L, T, H]`` -> generated factors A ``[N, L, r, d_in]`` and B ``[N, L, d_out, r]``.

    Head weights are stored at unit scale and multiplied by 1/sqrt(fan_out) in the forward pass, so
    A's rows and B's columns start near unit norm while Adam's steps stay small relative to the
    weights (docs/hypernet-design.md). The bias LoRA uses the same convention; its B starts at zero.
    """

    def __init__(self, cfg: HypernetConfig):
        super().__init__()
        if cfg.n_layers == 0:
            raise ValueError("HypernetConfig.module_paths is empty: build it with from_base_model")
        self.cfg = cfg
        L, d, r, m = cfg.n_layers, cfg.d, cfg.rank, cfg.mlp_mult
        self.proj = nn.Linear(cfg.d_model, d)
        self.layer_emb = nn.Parameter(0.02 * torch.randn(L, d))
        self.latents = nn.Parameter(0.02 * torch.randn(cfg.n_latents, d))
        self.encoder = nn.ModuleList(Block(d, cfg.n_heads, m) for _ in range(cfg.n_blocks))
        self.rank_queries = nn.Parameter(0.02 * torch.randn(L, r, d))
        self.decoder = Block(d, cfg.n_heads, m)
        self.mlp_ln = nn.LayerNorm(d)
        self.mlp_in = nn.Parameter(torch.randn(L, d, m * d) * d**-0.5)
        self.mlp_out = nn.Parameter(torch.zeros(L, m * d, d))
        self.head_A = nn.Parameter(torch.randn(L, d, cfg.d_in))
        self.head_B = nn.Parameter(torch.randn(L, d, cfg.d_out))
        self.gen_scale = nn.Parameter(torch.zeros(L))  # s_l: zero, so the generated update starts at 0
        self.bias_A = nn.Parameter(torch.randn(L, cfg.bias_rank, cfg.d_in))
        self.bias_B = nn.Parameter(torch.zeros(L, cfg.d_out, cfg.bias_rank))

    def check_base(self, weights_sha256: str) -> None:
        """Refuse a base model other than the one this network was trained for."""
        trained_for = self.cfg.base_weights_sha256
        if trained_for and trained_for != weights_sha256:
            raise CheckpointError(
                f"hypernetwork trained for base model {self.cfg.base_model_id!r} "
                f"(weights {trained_for[:12]}), not for weights {weights_sha256[:12]}"
            )

    def bias_parameters(self) -> list[nn.Parameter]:
        return [self.bias_A, self.bias_B]

    def generator_parameters(self) -> list[nn.Parameter]:
        bias = {id(p) for p in self.bias_parameters()}
        return [p for p in self.parameters() if id(p) not in bias]

    def forward(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Generated factors for N documents (or chunks); ``mask`` [N, T] marks real tokens."""
        cfg = self.cfg
        N, L, T, _ = features.shape
        x = self.proj(features.float()) + self.layer_emb[None, :, None, :]  # [N, L, T, d]
        x = x.reshape(N * L, T, cfg.d)  # every layer of every document is one Perceiver input
        token_mask = mask.repeat_interleave(L, dim=0)  # [N*L, T]
        z = self.latents.expand(N * L, -1, -1)  # [N*L, n_latents, d]
        for block in self.encoder:
            z = block(z, x, token_mask)
        q = self.rank_queries.repeat(N, 1, 1)  # [N*L, r, d], layer-minor like x
        v = self.decoder(q, z).view(N, L, cfg.rank, cfg.d)  # [N, L, r, d]
        hidden = F.gelu(torch.einsum("nlrd,ldk->nlrk", self.mlp_ln(v), self.mlp_in))  # [N, L, r, m*d]
        v = F.normalize(v + torch.einsum("nlrk,lkd->nlrd", hidden, self.mlp_out), dim=-1)
        A = torch.einsum("nlrd,ldi->nlri", v, self.head_A) * cfg.d_in**-0.5  # [N, L, r, d_in]
        B = torch.einsum("nlrd,ldo->nlor", v, self.head_B) * cfg.d_out**-0.5  # [N, L, d_out, r]
        B = B * (cfg.alpha * self.gen_scale)[None, :, None, None]
        return A, B

    def document_factors(self, docs: list[list[Tensor]]) -> tuple[Tensor, Tensor]:
        """Generated factors per document from its chunks' features, chunks concatenated along rank.

        ``docs[i]`` holds document i's chunk features ``[L, T, H]``. Returns A ``[D, L, c*r, d_in]``
        and B ``[D, L, d_out, c*r]`` for c = the most chunks of any document; a shorter document's
        missing chunks are zero factors, which add nothing to its update (``generate``'s order).
        """
        counts = [len(chunks) for chunks in docs]
        features, mask = pad_features([c for chunks in docs for c in chunks])
        dev = self.head_A.device
        A, B = self(features.to(dev), mask.to(dev))  # [n_chunks, L, r, ·]
        if max(counts) == 1:
            return A, B
        weight = torch.tensor([self.chunk_weight(n) for n in counts for _ in range(n)], device=dev)
        B = B * weight[:, None, None, None].to(B.dtype)
        D, c, (_, L, r, d_in), d_out = len(docs), max(counts), A.shape, B.shape[2]
        A_out = A.new_zeros(D, c, L, r, d_in)
        B_out = B.new_zeros(D, c, L, d_out, r)
        doc = torch.repeat_interleave(torch.arange(D), torch.tensor(counts))
        pos = torch.cat([torch.arange(n) for n in counts])
        A_out = A_out.index_put((doc, pos), A)
        B_out = B_out.index_put((doc, pos), B)
        A_out = A_out.permute(0, 2, 1, 3, 4).reshape(D, L, c * r, d_in)
        B_out = B_out.permute(0, 2, 3, 1, 4).reshape(D, L, d_out, c * r)
        return A_out, B_out

    def chunk_weight(self, n_chunks: int) -> float:
        """The factor on each chunk's B when a document has ``n_chunks`` chunks (see ``chunk_merge``)."""
        return 1.0 / n_chunks if self.cfg.chunk_merge == "mean" else 1.0

    def bias_factors(self) -> tuple[Tensor, Tensor]:
        """The bias LoRA: A ``[L, rb, d_in]``, B ``[L, d_out, rb]``."""
        cfg = self.cfg
        return self.bias_A * cfg.d_in**-0.5, self.bias_B * (cfg.alpha * cfg.d_out**-0.5)

    def batch_adapter(self, A: Tensor | None, B: Tensor | None, index: Tensor) -> LoraWeights:
        """One adapter per sequence: generated factors of document ``index[s]`` plus the bias.

        ``A``/``B`` are ``forward``'s outputs (None: bias only); ``index`` is ``[S]``.
        """
        bias_A, bias_B = self.bias_factors()
        S = index.shape[0]
        As, Bs = {}, {}
        for layer, path in enumerate(self.cfg.module_paths):
            a = bias_A[layer].expand(S, -1, -1)  # [S, rb, d_in]
            b = bias_B[layer].expand(S, -1, -1)  # [S, d_out, rb]
            if A is not None and B is not None:
                a = torch.cat([A[index, layer], a], dim=1)  # [S, r + rb, d_in]
                b = torch.cat([B[index, layer], b], dim=2)  # [S, d_out, r + rb]
            As[path], Bs[path] = a, b
        return LoraWeights(As, Bs, 1.0)

    @torch.no_grad()
    def generate(self, chunks: list[Tensor]) -> LoraWeights:
        """The adapter for one document from its chunks' features (``[L, T, H]`` each).

        Rank is ``len(chunks) * rank + bias_rank``: chunk LoRAs concatenated, the bias once.
        """
        if not chunks:
            raise ValueError("generate needs the features of at least one chunk")
        device = self.head_A.device
        features, mask = pad_features(chunks)
        A, B = self(features.to(device), mask.to(device))  # [n, L, r, d_in], [n, L, d_out, r]
        B = B * self.chunk_weight(len(chunks))
        bias_A, bias_B = self.bias_factors()
        n, r = len(chunks), self.cfg.rank
        As, Bs = {}, {}
        for layer, path in enumerate(self.cfg.module_paths):
            a = A[:, layer].reshape(n * r, -1)  # [n*r, d_in], chunk-major
            b = B[:, layer].permute(1, 0, 2).reshape(-1, n * r)  # [d_out, n*r], same order
            As[path] = torch.cat([a, bias_A[layer]], dim=0)
            Bs[path] = torch.cat([b, bias_B[layer]], dim=1)
        return LoraWeights(As, Bs, 1.0)  # on the network's device; no graph under no_grad

    @torch.no_grad()
    def bias_only(self) -> LoraWeights:
        """The bias LoRA alone: the 'generated part zeroed' control."""
        A, B = self.bias_factors()
        paths = self.cfg.module_paths
        return LoraWeights(
            {p: A[i] for i, p in enumerate(paths)}, {p: B[i] for i, p in enumerate(paths)}, 1.0
        )


# ---------------------------------------------------------------- losses on the generated factors


def shared_fraction(A: Tensor, B: Tensor) -> Tensor:
    """||mean_i dW_i||^2 / mean_i ||dW_i||^2 per layer, averaged over layers (dW_i = B_i A_i).

    0 when the documents' updates cancel on average, 1 when every document gets the same update,
    about 1/N for N unrelated updates. Exact, through r x r Gram matrices:
    ||sum_i B_i A_i||^2 = sum of (B^T B) * (A A^T) over the stacked ranks of all documents.
    """
    N, L, r, _ = A.shape
    a = A.permute(1, 0, 2, 3).reshape(L, N * r, -1)  # [L, N*r, d_in]
    b = B.permute(1, 0, 3, 2).reshape(L, N * r, -1)  # [L, N*r, d_out]
    prod = (b @ b.transpose(1, 2)) * (a @ a.transpose(1, 2))  # [L, N*r, N*r]
    total = prod.sum(dim=(1, 2))  # ||sum_i dW_i||^2 per layer
    own = prod.view(L, N, r, N, r).diagonal(dim1=1, dim2=3).sum(dim=(1, 2, 3))  # sum_i ||dW_i||^2
    return (total / (N * own + 1e-12)).mean()


# ---------------------------------------------------------------- checkpoints (safetensors + JSON)


def save_hypernet(net: Hypernet, out_dir: Path, training: dict[str, Any] | None = None) -> str:
    """Write ``hypernet.safetensors`` (weights, config in its metadata) and ``hypernet.json``.

    Returns the checkpoint's sha256 (of the safetensors file, which carries the config too).
    """
    return write_network(net, out_dir, (WEIGHTS_FILE, META_FILE), training)


def checkpoint_sha256(ckpt_dir: Path) -> str:
    """The fingerprint of a checkpoint: sha256 of its safetensors file."""
    return sha256_files([Path(ckpt_dir) / WEIGHTS_FILE])


def load_hypernet(ckpt_dir: Path, device: str = "cpu") -> Hypernet:
    """Load a checkpoint written by ``save_hypernet`` (no pickle anywhere)."""
    config, state = read_network(ckpt_dir, WEIGHTS_FILE, "hypernetwork", CheckpointError)
    net = Hypernet(HypernetConfig.from_dict(config))
    fill_network(net, state, Path(ckpt_dir) / WEIGHTS_FILE, "hypernetwork", CheckpointError)
    return net.to(device).eval()
