"""`objective=simcse_unsup`: unsupervised SimCSE (Gao et al., arXiv 2104.08821, §3)."""

from csetrain.objectives.base import InfoNCEObjective


class SimCSEUnsup(InfoNCEObjective):
    """The same sentence passed twice; the dropout masks make the two views differ.

    Batch fields: `anchor` from the corpus; `positive` built from it by the augmentation
    (`augmentation=dropout`: identical tokens). Miner: `in_batch` (N-1 negatives per anchor).
    Loss: InfoNCE over cos(h_i, h_j+)/temperature, temperature 0.05. Deviation from the official
    code: none in the loss; both views run in one forward pass of a 2B batch, as in SimCSE's
    `cl_forward` (it flattens the views into one batch too).
    """

    data_fields = ("anchor",)
    augmented_positive = True
