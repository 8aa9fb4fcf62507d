"""The Text-to-LoRA hypernetwork: a description of behaviour in, a LoRA for the base model out.

After Sakana AI's text-to-lora, "M" variant (docs/hypernet-design.md, T2L section), scaled to SmolLM2:

    description -> frozen base model, hidden states of ``encoder_layer`` mean-pooled over tokens
      -> LayerNorm (no affine; residual norms span 3..600 across layers) -> Linear -> LayerNorm  [latent/2]
      ++ learned layer embedding [latent/4] ++ learned module-type embedding [latent/4]
      -> mixer MLP + residual MLP                                                                 [latent]
      -> + learned A/B embedding -> ONE head per module type emitting r * max(d_in, d_out) values,
         read as A [r, d_in] or B [d_out, r]  (the "M" variant's shared A/B head)

Head weights start at zero and separate A and B biases hold PEFT's initialisation (A: Kaiming-uniform,
B: 0),
T2L's "bias-HyperInit": an untrained network emits the same near-identity adapter for every
description (B = 0 changes nothing). The LoRA maths (``LoraWeights``, ``applied``) and the PEFT export
(``hypernet.adapter``) are shared with Doc-to-LoRA. Checkpoints are safetensors with the config in the
metadata, plus a JSON sidecar; never pickles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypernet.base_model import BaseModel, sha256_files
from hypernet.lora import LoraWeights, target_linears
from hypernet.network_files import fill_network, read_network, write_network

WEIGHTS_FILE = "t2l.safetensors"
META_FILE = "t2l.json"


class T2LError(Exception):
    """A T2L checkpoint is missing, malformed or does not fit the base model; the message says which."""


@dataclass
class T2LConfig:
    # base model geometry (from_base_model reads it)
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    module_paths: dict[str, list[str]] = field(default_factory=dict)  # target -> path of each layer
    d_in: dict[str, int] = field(default_factory=dict)
    d_out: dict[str, int] = field(default_factory=dict)
    d_embed: int = 576  # width of the description embedding (the base model's hidden size)
    encoder_layer: int = -1  # hidden_states index pooled for the description (-1: the last, normed)
    zscore: bool = False  # z-score embeddings with training statistics instead of a plain LayerNorm
    base_model_id: str = ""
    base_weights_sha256: str = ""
    # network
    latent: int = 128
    rank: int = 8
    alpha: float = 16.0  # scaling alpha / rank (plain LoRA, so PEFT exports it unchanged)

    @property
    def n_layers(self) -> int:
        return len(self.module_paths[self.targets[0]])

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_base_model(cls, model: nn.Module, **overrides: Any) -> T2LConfig:
        targets = list(overrides.pop("targets", ["q_proj", "v_proj"]))
        paths, d_in, d_out = {}, {}, {}
        for t in targets:
            found = target_linears(model, t)
            paths[t] = list(found)
            first = next(iter(found.values()))
            d_in[t], d_out[t] = first.in_features, first.out_features
        cfg = model.config
        return cls(
            targets=targets, module_paths=paths, d_in=d_in, d_out=d_out, d_embed=cfg.hidden_size, **overrides
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> T2LConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise T2LError(f"T2L config has unknown field(s) {unknown}")
        return cls(**data)


class T2LHypernet(nn.Module):
    def __init__(self, cfg: T2LConfig) -> None:
        super().__init__()
        if cfg.latent % 4:
            raise ValueError(f"T2LConfig.latent must be a multiple of 4, got {cfg.latent}")
        self.cfg = cfg
        h = cfg.latent
        self.desc_proj = nn.Sequential(nn.Linear(cfg.d_embed, h // 2), nn.LayerNorm(h // 2))
        # Optional z-scoring of the description embedding, per dimension, with the training descriptions'
        # statistics (set_embedding_stats): mean-pooled states share a large common component. Tried once:
        # at lr 1e-3 its training CE was ~1.5 nats worse than LayerNorm's on the same batches (steps 20-35).
        if cfg.zscore:
            self.register_buffer("emb_mean", torch.zeros(cfg.d_embed))
            self.register_buffer("emb_std", torch.ones(cfg.d_embed))
        self.layer_emb = nn.Embedding(cfg.n_layers, h // 4)
        self.module_emb = nn.Embedding(len(cfg.targets), h // 4)
        self.mixer = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h))
        self.residual = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, 2 * h), nn.SiLU(), nn.Linear(2 * h, h))
        self.ab_emb = nn.Embedding(2, h)
        # one head per module type, shared by A and B (told apart by ab_emb); separate A/B biases
        self.heads = nn.ModuleList(
            nn.Linear(h, cfg.rank * max(cfg.d_in[t], cfg.d_out[t]), bias=False) for t in cfg.targets
        )
        self.bias_a = nn.ParameterList()
        self.bias_b = nn.ParameterList()
        for t, head in zip(cfg.targets, self.heads, strict=True):
            nn.init.zeros_(head.weight)
            a = torch.empty(cfg.rank, cfg.d_in[t])
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # bias-HyperInit: PEFT's A init, B = 0
            self.bias_a.append(nn.Parameter(a))
            self.bias_b.append(nn.Parameter(torch.zeros(cfg.d_out[t], cfg.rank)))

    def forward(self, emb: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Embeddings ``[N, d_embed]`` -> per target, A ``[N, L, r, d_in]`` and B ``[N, L, d_out, r]``."""
        cfg, N, L = self.cfg, emb.shape[0], self.cfg.n_layers
        x = emb.float()
        x = (x - self.emb_mean) / self.emb_std if cfg.zscore else F.layer_norm(x, x.shape[-1:])
        d = self.desc_proj(x)  # [N, h/2]
        A, B = {}, {}
        for m, (t, head) in enumerate(zip(cfg.targets, self.heads, strict=True)):
            cond = torch.cat(
                [
                    d[:, None, :].expand(N, L, -1),
                    self.layer_emb.weight[None].expand(N, L, -1),
                    self.module_emb.weight[m][None, None].expand(N, L, -1),
                ],
                dim=-1,
            )
            x = self.mixer(cond)
            x = x + self.residual(x)  # [N, L, h]
            out_a = head(x + self.ab_emb.weight[0])
            out_b = head(x + self.ab_emb.weight[1])
            r, di, do = cfg.rank, cfg.d_in[t], cfg.d_out[t]
            A[t] = out_a[..., : r * di].reshape(N, L, r, di) + self.bias_a[m]
            B[t] = out_b[..., : do * r].reshape(N, L, do, r) + self.bias_b[m]
        return A, B

    @torch.no_grad()
    def set_embedding_stats(self, emb: Tensor) -> None:
        """Fix the z-scoring from the training descriptions' embeddings ``[n, d_embed]``."""
        self.emb_mean.copy_(emb.float().mean(0))
        self.emb_std.copy_(emb.float().std(0).clamp(min=1e-4))

    def lora(self, emb: Tensor, index: Tensor | None = None) -> LoraWeights:
        """Batched adapters (one per row of ``emb``, or per ``index`` entry) for ``hypernet.lora.applied``."""
        A, B = self(emb)
        As, Bs = {}, {}
        for t in self.cfg.targets:
            a, b = (A[t], B[t]) if index is None else (A[t][index], B[t][index])
            for layer, path in enumerate(self.cfg.module_paths[t]):
                As[path], Bs[path] = a[:, layer], b[:, layer]
        return LoraWeights(As, Bs, self.cfg.scaling)

    @torch.no_grad()
    def generate(self, emb: Tensor) -> LoraWeights:
        """One unbatched adapter for a single description embedding ``[d_embed]``."""
        w = self.lora(emb[None])
        return LoraWeights({k: v[0] for k, v in w.A.items()}, {k: v[0] for k, v in w.B.items()}, w.scaling)


@torch.no_grad()
def pooled_states(base: BaseModel, texts: list[str], layers: list[int], batch: int = 16) -> Tensor:
    """``[n, len(layers), d]``: each text's hidden states at ``layers`` (``hidden_states`` indices; -1
    is the last, after the final norm) mean-pooled over its tokens, from the frozen base model."""
    if not texts:
        raise ValueError("embed_descriptions needs at least one description")
    tok, out = base.tokenizer, []
    for start in range(0, len(texts), batch):
        chunk = [t.strip() for t in texts[start : start + batch]]
        if any(not t for t in chunk):
            raise ValueError("a description is empty")
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        mask = enc["attention_mask"].to(base.device)
        hidden = base.model(
            input_ids=enc["input_ids"].to(base.device), attention_mask=mask, output_hidden_states=True
        ).hidden_states
        w = mask[..., None].float()
        out.append(torch.stack([(hidden[i].float() * w).sum(1) / w.sum(1) for i in layers], dim=1).cpu())
    return torch.cat(out)


def embed_descriptions(base: BaseModel, texts: list[str], layer: int = -1, batch: int = 16) -> Tensor:
    """``[n, d]``: the description embeddings the network reads (``pooled_states`` at one layer)."""
    return pooled_states(base, texts, [layer], batch)[:, 0]


def describe_to_lora(base: BaseModel, net: T2LHypernet, description: str) -> LoraWeights:
    """The adapter for one description, on the CPU (ready for ``hypernet.adapter.save_adapter``)."""
    emb = embed_descriptions(base, [description], net.cfg.encoder_layer).to(next(net.parameters()).device)
    return net.generate(emb[0]).detach()


# ---------------------------------------------------------------- checkpoints


def save_t2l(net: T2LHypernet, out_dir: Path, training: dict[str, Any] | None = None) -> str:
    """``t2l.safetensors`` (weights, config in its metadata) and ``t2l.json``; returns the sha256."""
    return write_network(net, out_dir, (WEIGHTS_FILE, META_FILE), training)


def load_t2l(ckpt_dir: Path, device: str = "cpu", base: BaseModel | None = None) -> T2LHypernet:
    """Load a checkpoint written by ``save_t2l``; with ``base``, check it was built for that model."""
    config, state = read_network(ckpt_dir, WEIGHTS_FILE, "T2L", T2LError)
    cfg = T2LConfig.from_dict(config)
    if base is not None and cfg.base_weights_sha256 and cfg.base_weights_sha256 != base.weights_sha256:
        raise T2LError(
            f"T2L checkpoint {ckpt_dir} was trained for base model {cfg.base_model_id!r} "
            f"(weights {cfg.base_weights_sha256[:12]}), not {base.model_id!r} ({base.weights_sha256[:12]})"
        )
    net = T2LHypernet(cfg)
    fill_network(net, state, Path(ckpt_dir) / WEIGHTS_FILE, "T2L", T2LError)
    return net.to(device).eval()


CHECKPOINTS_DIR = Path(__file__).resolve().parent / "checkpoints"


def shipped_checkpoint(base_model_id: str) -> Path:
    """The T2L checkpoint shipped for a base model alias (``hypernet/checkpoints/t2l-<alias>``)."""
    path = CHECKPOINTS_DIR / f"t2l-{base_model_id}"
    if not (path / WEIGHTS_FILE).is_file():
        raise T2LError(f"no T2L checkpoint is shipped for base model {base_model_id!r}; pass --checkpoint")
    return path


def description_lineage(
    description: str, net: T2LHypernet, ckpt_dir: Path, base: BaseModel
) -> dict[str, Any]:
    """What ``instill.json`` records for an instruction adapter: the text, the network, the base."""
    import hashlib

    return {
        "kind": "instruction",
        "generator": "t2l",
        "description": description,
        "description_sha256": hashlib.sha256(description.encode()).hexdigest(),
        "t2l_checkpoint": str(ckpt_dir),
        "t2l_checkpoint_sha256": sha256_files([Path(ckpt_dir) / WEIGHTS_FILE]),
        "base_model_id": base.model_id,
        "base_model_sha256": base.weights_sha256,
        "targets": list(net.cfg.targets),
        "rank": net.cfg.rank,
    }
