"""`regularizer=align_uniform`: alignment + uniformity (Wang & Isola 2020, arXiv 2005.10242),
added to any objective as in "It's Not a Modality Gap" (arXiv 2405.18570, §5), which adds these
two terms to the contrastive loss to close the contrastive gap."""

from __future__ import annotations

from torch import nn

from csetrain.losses import alignment, uniformity
from csetrain.objectives.base import ObjectiveOutput


class AlignUniform(nn.Module):
    """align_weight * alignment(anchor, positive) + uniform_weight * mean(uniformity(anchor),
    uniformity(positive)), on the training embeddings (head applied, full size).

    Batch fields: `anchor`, `positive` (any objective with positives). Defaults alpha = t = 2 are
    Wang & Isola's; the weights default to 1 (the gap paper tunes them per setting).
    """

    def __init__(
        self,
        align_weight: float = 1.0,
        uniform_weight: float = 1.0,
        alpha: float = 2.0,
        t: float = 2.0,
    ):
        super().__init__()
        self.align_weight, self.uniform_weight, self.alpha, self.t = (
            align_weight,
            uniform_weight,
            alpha,
            t,
        )

    def forward(self, views, batch, encoder) -> ObjectiveOutput:
        anchors, positives = views["anchor"], views["positive"]
        align = alignment(anchors, positives, self.alpha)
        uniform = (uniformity(anchors, self.t) + uniformity(positives, self.t)) / 2
        loss = self.align_weight * align + self.uniform_weight * uniform
        return ObjectiveOutput(loss, {"alignment": align.detach(), "uniformity": uniform.detach()})
