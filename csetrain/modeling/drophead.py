"""Drophead (Zhou et al. 2020): whole attention heads dropped per row during training, through
forward hooks on the self-attention module instances (no model class is patched)."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

from csetrain.config import ConfigError


def _drop_heads(module: nn.Module, args, output, p: float):
    """Forward hook on a self-attention module: zero whole heads of its context output, each head
    of each row with probability p, rescaled by heads / kept heads (drophead, Zhou et al. 2020)."""
    if not module.training:
        return output
    context = output[0]  # (N, L, H * d)
    rows, length, _ = context.shape
    heads = module.num_attention_heads
    keep = torch.bernoulli(torch.full((rows, 1, heads, 1), 1.0 - p, device=context.device))
    kept = keep.sum(dim=2, keepdim=True).clamp(min=1.0)  # all heads dropped -> zeros, not NaN
    scaled = context.view(rows, length, heads, -1) * (keep * heads / kept).to(context.dtype)
    return (scaled.view(rows, length, -1), *output[1:])


def self_attention_modules(transformer: nn.Module) -> list[nn.Module]:
    """The per-layer self-attention modules (BERT/RoBERTa families: `*SelfAttention` with heads)."""
    return [
        m
        for m in transformer.modules()
        if type(m).__name__.endswith("SelfAttention") and hasattr(m, "num_attention_heads")
    ]


@contextmanager
def drop_heads(transformer: nn.Module, p: float):
    """Drophead on every self-attention layer of `transformer` for the duration of the block.

    Forward hooks on the module instances (no model class is patched) and removed on exit, so
    evaluation, export and a momentum encoder copied from the transformer never see them.
    transformers 5.x has no `head_mask` argument any more, hence hooks on the attention output.
    """
    if not p:
        yield
        return
    modules = self_attention_modules(transformer)
    if not modules:
        raise ConfigError(
            f"objective.drophead={p}: {type(transformer).__name__} has no *SelfAttention modules "
            "with heads; set objective.drophead=0"
        )
    handles = [m.register_forward_hook(partial(_drop_heads, p=p)) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
