"""`negative_mining=in_batch`: only the other rows' positives are negatives (N-1 per anchor)."""

from csetrain.negatives.base import NegativeMiner


class InBatch(NegativeMiner):
    """No extra negatives: SimCSE's default (N-1 in-batch negatives, not 2N-2; SimCSE#11)."""
