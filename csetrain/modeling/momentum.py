"""MomentumEncoder: an exponential-moving-average copy of a SentenceEncoder's backbone (MoCo,
ESimCSE), embedding with the live encoder's pooler and head."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class MomentumEncoder(nn.Module):
    """EMA of the backbone's parameters (not its buffers, not the head or a trained pooler):
    after `update(online)`, p_ema = m * p_ema + (1 - m) * p_online. It starts equal to the online
    weights. `embed` pools its hidden states with the *live* encoder's pooling layer and head, as
    ESimCSE's code does, so a head trained this step shapes this step's keys.

    torch's `AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(m))` computes the same EMA but copies
    the online weights on its first update (n_averaged == 0) and averages every submodule, head
    included; this keeps the paper's update from the first step on and the backbone only.
    """

    def __init__(self, encoder: nn.Module, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.backbone = copy.deepcopy(encoder.transformer).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, encoder: nn.Module) -> None:
        """One EMA step toward the online encoder's current backbone weights."""
        pairs = zip(self.backbone.parameters(), encoder.transformer.parameters())
        for tracked, online in pairs:
            tracked.mul_(self.momentum).add_(online.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def embed(self, encoder: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Keys (dropout off, no gradient): this backbone, the live pooler and head: (B, L) -> (B, D)."""
        self.backbone.eval()
        return encoder.project(encoder.pooled(input_ids, attention_mask, backbone=self.backbone))
