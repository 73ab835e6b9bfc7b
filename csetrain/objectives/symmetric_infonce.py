"""`objective=symmetric_infonce`: CLIP's symmetric contrastive loss (Radford et al., arXiv
2103.00020, §2.3 and Figure 3) on sentence pairs, with CLIP's learnable log-scale temperature."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csetrain.config import ConfigError
from csetrain.data.collate import Batch
from csetrain.losses import cosine_matrix, top1_accuracy
from csetrain.negatives.base import NegativeMiner
from csetrain.objectives.base import Objective, ObjectiveOutput

PositiveSource = Literal["augmentation", "data"]


def symmetric_info_nce(
    anchors: Tensor, positives: Tensor, scale: Tensor, extra: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Mean of the anchor->positive and positive->anchor cross-entropies of cos * scale.

    anchors, positives (B, D); scale = 1 / temperature (a scalar tensor, may carry a gradient);
    extra (M, D) are additional candidates for the anchor->positive direction only (a positive's
    candidates are the B anchors). Returns (loss, anchor->candidate logits (B, B + M)).
    """
    candidates = positives if extra is None else torch.cat([positives, extra])
    logits = cosine_matrix(anchors, candidates).float() * scale  # (B, B + M)
    targets = torch.arange(len(anchors), device=anchors.device)
    a2p = F.cross_entropy(logits, targets)
    p2a = F.cross_entropy(logits[:, : len(positives)].T, targets)  # (B, B): positive j vs anchors
    return (a2p + p2a) / 2, logits


class SymmetricInfoNCE(Objective):
    """Both directions of InfoNCE, averaged: each anchor picks its positive among the positives,
    and each positive picks its anchor among the anchors.

    Batch fields: `anchor`, and `positive` from the augmentation (`positive_from: augmentation`,
    default: dropout twins as in unsup SimCSE) or from the corpus (`positive_from: data`, e.g.
    `data=nli`). Miner: any; extra negatives join the anchor->positive direction only.

    Temperature: fixed, or with `learnable_temperature: true` CLIP's parameterisation, a learned
    log-scale `log_scale = log(1 / temperature)` (a parameter of this objective, so train.py's
    optimizer, built from encoder + objective parameters, trains it). Like CLIP (and open_clip's
    loop, which clamps `logit_scale` to [0, ln 100] after every optimizer step) we clamp it in
    place after each step to temperature in [min_temperature, 1]; CLIP's min is 0.01. CLIP
    initialises temperature 0.07; we start from `temperature` (SimCSE's 0.05 by default).
    Deviation: open_clip exempts `logit_scale` from weight decay; csetrain's optimizer applies
    `trainer.weight_decay` (0 by default) to every parameter.
    """

    def __init__(
        self,
        miner: NegativeMiner | None = None,
        temperature: float = 0.05,
        learnable_temperature: bool = False,
        min_temperature: float = 0.01,
        positive_from: PositiveSource = "augmentation",
    ) -> None:
        super().__init__(miner)
        if positive_from not in ("augmentation", "data"):
            raise ConfigError(
                f"objective.positive_from='{positive_from}': choose augmentation or data"
            )
        if not 0 < min_temperature <= temperature <= 1:
            raise ConfigError(
                f"objective.temperature={temperature}: needs min_temperature ({min_temperature}) <= temperature <= 1"
            )
        self.augmented_positive = positive_from == "augmentation"
        self.data_fields = ("anchor",) if self.augmented_positive else ("anchor", "positive")
        self.max_log_scale = math.log(1 / min_temperature)
        log_scale = torch.tensor(math.log(1 / temperature))
        if learnable_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def temperature(self) -> float:
        return float(1 / self.log_scale.detach().exp())

    def loss(self, views: dict[str, Tensor], batch: Batch) -> ObjectiveOutput:
        anchors, positives = views["anchor"], views["positive"]  # (B, D) each
        extra = self.miner.extra_negatives(anchors, views)
        loss, logits = symmetric_info_nce(
            anchors, positives, self.log_scale.exp(), None if extra is None else extra.embeddings
        )
        targets = torch.arange(len(anchors), device=anchors.device)
        return ObjectiveOutput(
            loss,
            {
                "acc": top1_accuracy(logits.detach(), targets),
                "temperature": 1 / self.log_scale.detach().exp(),
            },
        )

    def after_optimizer_step(self, encoder: nn.Module, batch: Batch) -> None:
        with torch.no_grad():  # CLIP/open_clip: clamp the learned scale after each step
            self.log_scale.clamp_(0.0, self.max_log_scale)
        super().after_optimizer_step(encoder, batch)
