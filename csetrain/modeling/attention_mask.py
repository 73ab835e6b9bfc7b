"""4-D attention masks for decoders: which keys each query may see, as the additive float mask
transformers passes to its attention layers unchanged (modeling/decoders.py explains why).
Torch only, so packing.py and decoders.py share it without importing each other."""

from __future__ import annotations

import torch
from torch import Tensor


def is_decoder(transformer) -> bool:
    """Whether the backbone's attention is causal by construction (decoder-only models)."""
    return any(getattr(m, "is_causal", False) is True for m in transformer.modules())


def positions(attention_mask: Tensor) -> Tensor:
    """Position ids counted over real tokens (0 at each row's first), so left padding shifts
    nothing: (N, L) -> (N, L) long; padding slots get 0."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def allowed_keys(attention_mask: Tensor, causal: bool, segments: Tensor | None = None) -> Tensor:
    """(N, 1, L, L) bool: may query i attend to key j. Keys must be real tokens, of the same
    segment (packing; None = one per row) and, if causal, not later than i. Every query also
    sees itself, so a padding row is never fully masked (NaN in softmax)."""
    n, length = attention_mask.shape
    real = attention_mask.bool()
    allowed = real[:, None, :].expand(n, length, length)  # (N, Lq, Lk): key is real
    if segments is not None:
        allowed = allowed & (segments[:, :, None] == segments[:, None, :])
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=real.device)
    return allowed.unsqueeze(1)


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool (N, 1, L, L) -> the additive float mask eager and SDPA attention both take."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return zero.masked_fill(~allowed, torch.finfo(dtype).min)
