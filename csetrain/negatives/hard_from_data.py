"""`negative_mining=hard_from_data`: each row's `hard_negative` field (NLI contradictions)."""

from __future__ import annotations

from torch import Tensor

from csetrain.negatives.base import NegativeMiner, Negatives


class HardFromData(NegativeMiner):
    """Supervised SimCSE's hard negatives: every anchor sees all B contradiction hypotheses of
    the batch as extra candidates; its own one is `aligned` (SimCSE's weight applies to it)."""

    fields = ("hard_negative",)

    def extra_negatives(self, anchors: Tensor, views: dict[str, Tensor]) -> Negatives | None:
        if "hard_negative" not in views:  # data=mix: a batch from a source without them
            return None
        return Negatives(views["hard_negative"], aligned=True)
