"""`negative_mining=hard_from_data`: each row's hard negatives (NLI contradictions; k per row)."""

from __future__ import annotations

import torch
from torch import Tensor

from csetrain.data.hard_negatives import ROLE, role_fields
from csetrain.negatives.base import NegativeMiner, Negatives


class HardFromData(NegativeMiner):
    """Supervised SimCSE's hard negatives: every anchor sees all B*k hard negatives of the
    batch as extra candidates (k = 1: the `hard_negative` field; k > 1: `hard_negative_1..k`,
    as sentence-transformers' MultipleNegativesRankingLoss takes all B rows of every negative
    column); its own k are `aligned` (SimCSE's weight applies to each of them)."""

    fields = (ROLE,)  # the role; the corpus's fields for it: csetrain.data.hard_negatives

    def extra_negatives(self, anchors: Tensor, views: dict[str, Tensor]) -> Negatives:
        names = role_fields(ROLE, tuple(views))
        if len(names) == 1:  # k = 1: the view itself, as before several negatives existed
            return Negatives(views[names[0]], aligned=True)
        blocks = torch.cat([views[name] for name in names])  # (k*B, D), block j = negative j
        return Negatives(blocks, aligned=True, blocks=len(names))
