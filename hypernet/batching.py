"""Token batches for the frozen base model: padding, and one forward pass shared across a common prefix.

Every scorer (context distillation, the metrics, the hypernetwork's teacher) puts a document before
several questions; ``shared_prefix_logprobs`` runs the document once and reuses its KV cache for all of
them, which is what makes the in-context teacher affordable.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["cache_kwarg", "common_prefix_len", "pad_id", "right_pad", "shared_prefix_logprobs"]


def shared_prefix_logprobs(model: nn.Module, seqs: list[tuple[list[int], list[int]]], pad_id: int) -> Tensor:
    """Log-probs ``[M, V]`` on the answer tokens; the prompts' common prefix (the document) runs once."""
    prompts = [p for p, _ in seqs]
    shared = min(common_prefix_len(prompts), min(len(p) for p in prompts) - 1)
    dev = next(model.parameters()).device
    cache = None
    if shared > 0:
        prefix = torch.tensor([prompts[0][:shared]], device=dev)
        out = model(input_ids=prefix, use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        cache.batch_repeat_interleave(len(seqs))
    rest = [(p[shared:], a) for p, a in seqs]
    input_ids, mask, predict = right_pad(rest, pad_id)
    full_mask = torch.cat([torch.ones(len(seqs), shared, dtype=mask.dtype), mask], dim=1)
    logits = model(
        input_ids=input_ids.to(dev),
        attention_mask=full_mask.to(dev),
        logits_to_keep=predict.to(dev),
        use_cache=False,
        **{cache_kwarg(model): cache},
    ).logits
    return F.log_softmax(logits.float(), dim=-1)


def right_pad(seqs: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """``[N, T]`` ids, attention mask and the positions that predict each answer token."""
    width = max(len(p) + len(a) for p, a in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    predict = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (prompt, answer) in enumerate(seqs):
        n = len(prompt) + len(answer)
        ids[i, :n] = torch.tensor(prompt + answer)
        mask[i, :n] = 1
        predict[i, len(prompt) - 1 : n - 1] = True
    return ids, mask, predict


def common_prefix_len(seqs: list[list[int]]) -> int:
    n = 0
    for column in zip(*seqs, strict=False):
        if any(t != column[0] for t in column):
            break
        n += 1
    return n


def cache_kwarg(model: nn.Module) -> str:
    # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns until 5.40)
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)
