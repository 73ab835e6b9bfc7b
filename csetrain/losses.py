"""Pure tensor math for contrastive objectives. No modules, no state; tested against hand
computations in tests/test_losses.py."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def upcast(x: Tensor) -> Tensor:
    """At least float32 for the softmax/log math: bf16/fp16 autocast outputs are upcast, float64
    (the exactness tests) stays float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of every row of `a` (N, D) with every row of `b` (M, D): (N, M)."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def info_nce(
    anchors: Tensor,
    candidates: Tensor,
    targets: Tensor,
    temperature: float,
    logit_offset: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """InfoNCE with cosine similarity: mean cross-entropy of softmax(cos / temperature).

    anchors (B, D); candidates (C, D); targets (B,) index the positive column of each anchor;
    logit_offset (B, C) is added after the temperature division (SimCSE's hard-negative weight).
    Returns (loss, logits (B, C)).
    """
    logits = cosine_matrix(anchors, candidates) / temperature  # (B, C)
    if logit_offset is not None:
        logits = logits + logit_offset
    return F.cross_entropy(upcast(logits), targets), logits


def hard_negative_offset(
    rows: int, columns: int, start: int, weight: float, device=None, blocks: int = 1
) -> Tensor:
    """SimCSE's offset matrix (rows, columns): `weight` at (i, start + j*rows + i) for each
    block j < `blocks`, anchor i's own hard negatives (k of them lie in k blocks of `rows`
    columns); zero elsewhere. SimCSE's `hard_negative_weight` is this *logit* offset, i.e. the
    log of the multiplicative weight: 0 means weight 1."""
    offset = torch.zeros(rows, columns, device=device)
    index = torch.arange(rows, device=device)
    for block in range(blocks):
        offset[index, start + block * rows + index] = weight
    return offset


def top1_accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """Fraction of anchors whose positive scores highest among all candidates."""
    return (logits.argmax(dim=-1) == targets).float().mean()


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """Wang & Isola's alignment: E ||x̂_i - ŷ_i||^alpha over positive pairs of L2-normalised rows.
    x, y (B, D) -> scalar; 0 when each pair coincides, 2^alpha when every pair is antipodal."""
    return (F.normalize(x, dim=-1) - F.normalize(y, dim=-1)).norm(dim=-1).pow(alpha).mean()


def uniformity(x: Tensor, t: float = 2.0) -> Tensor:
    """Wang & Isola's uniformity: log E_{i<j} exp(-t ||x̂_i - x̂_j||^2) over distinct pairs of
    L2-normalised rows. x (B, D) -> scalar; lower is more uniform (0 when all rows coincide, -4t
    for two antipodal rows). logsumexp keeps a large t from underflowing to log 0."""
    sq = torch.pdist(F.normalize(x, dim=-1)).pow(2)  # (B(B-1)/2,)
    return torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())
