"""`negative_mining=mixup`: anchor-inclusive embedding mixtures as hard negatives (the SupReMix
idea, arXiv 2309.16633: "anchor-inclusive mixtures" as hard negatives)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from csetrain.config import ConfigError
from csetrain.negatives.base import NegativeMiner, Negatives


def partner_index(batch: int, per_anchor: int, device=None) -> Tensor:
    """Partner rows (per_anchor * B,): block s (s = 1..per_anchor) pairs row i with (i + s) mod B,
    so no anchor is mixed with its own positive and each block is a permutation of the batch."""
    rows = torch.arange(batch, device=device)
    return torch.cat([(rows + shift) % batch for shift in range(1, per_anchor + 1)])


def mix(anchors: Tensor, others: Tensor, lam: Tensor) -> Tensor:
    """lam * unit(anchor) + (1 - lam) * unit(other), row by row: (N, D), (N, D), (N,) -> (N, D).
    Mixing unit vectors makes lam the share of each direction whatever the embedding norms."""
    lam = lam.to(anchors.dtype).unsqueeze(-1)  # (N, 1)
    return lam * F.normalize(anchors, dim=-1) + (1 - lam) * F.normalize(others, dim=-1)


class Mixup(NegativeMiner):
    """Extra negatives m = lam * anchor_i + (1 - lam) * positive_j, j != i, with gradients
    through both embeddings (they are part of the graph, not detached).

    Exactly which mixtures: `per_anchor` of them for each anchor i, with partners
    j = (i + s) mod B for s = 1..per_anchor (the batch order is a seeded random permutation, so
    these are random partners; never i itself). The M = per_anchor * B mixtures are laid out
    block by block (block s-1 = shift s) and, like every miner's extras, are candidates for all
    anchors. With per_anchor = 1 the block is `aligned` (row i is anchor i's own hard negative,
    so the objective's `hard_negative_weight` applies to it). `lam` is fixed from config, or, with
    `lam: null`, drawn per mixture from Beta(beta_alpha, beta_alpha) (the torch RNG, seeded).
    Unit vectors are mixed (see `mix`); the cosine InfoNCE only sees directions anyway.

    Deviation: SupReMix is a *supervised regression* method that mixes anchors with negatives
    chosen by label distance and also builds mixed positives; on unlabeled pairs we keep only
    the anchor-inclusive hard-negative mixtures, with in-batch positives as partners. Batch
    fields: `anchor`, `positive` (any objective with positives, e.g. simcse_unsup).
    """

    def __init__(
        self, per_anchor: int = 1, lam: float | None = 0.5, beta_alpha: float = 1.0
    ) -> None:
        super().__init__()
        if per_anchor < 1:
            raise ConfigError(f"negative_mining.per_anchor={per_anchor}: must be >= 1")
        if lam is not None and not 0.0 <= lam <= 1.0:
            raise ConfigError(f"negative_mining.lam={lam}: choose a value in [0, 1] or null (Beta)")
        if beta_alpha <= 0:
            raise ConfigError(f"negative_mining.beta_alpha={beta_alpha}: must be > 0")
        self.per_anchor, self.lam, self.beta_alpha = per_anchor, lam, beta_alpha

    def mixing_weights(self, count: int, device) -> Tensor:
        if self.lam is not None:
            return torch.full((count,), float(self.lam), device=device)
        alpha = torch.tensor(float(self.beta_alpha))
        return torch.distributions.Beta(alpha, alpha).sample((count,)).to(device)

    def extra_negatives(self, anchors: Tensor, views: dict[str, Tensor]) -> Negatives:
        batch = len(anchors)
        if self.per_anchor >= batch:
            raise ConfigError(
                f"negative_mining.per_anchor={self.per_anchor} needs trainer.batch_size > {self.per_anchor}"
            )
        own = torch.arange(batch, device=anchors.device).repeat(self.per_anchor)  # (M,)
        partners = partner_index(batch, self.per_anchor, anchors.device)  # (M,)
        lam = self.mixing_weights(len(own), anchors.device)  # (M,)
        mixtures = mix(anchors[own], views["positive"][partners], lam)  # (M, D)
        return Negatives(mixtures, aligned=self.per_anchor == 1)
