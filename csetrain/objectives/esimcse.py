"""`objective=esimcse`: ESimCSE (Wu et al., arXiv 2109.04380): unsupervised SimCSE whose positive
is a word-repeated copy and whose negatives include a momentum-encoder queue."""

from csetrain.objectives.base import InfoNCEObjective


class ESimCSE(InfoNCEObjective):
    """InfoNCE of each anchor against its repeated copy, the other rows' copies and the queue.

    Batch fields: `anchor` from the corpus; `positive` built from it by
    `augmentation=word_repetition` (subword duplication after truncation; dropout still differs
    between the views). Miner: `negative_mining=momentum_queue` (160 momentum-encoder embeddings
    of past anchors, m = 0.995). Both companions are selected in conf/objective/esimcse.yaml and a
    command-line override wins (e.g. `negative_mining=in_batch` ablates the queue).
    Loss: cross-entropy over [cos(z1, z2) | cos(z1, queue)] / temperature, temperature 0.05, the
    official `loss_neg`; with an empty queue (first step) it is SimCSE's loss.
    Deviations from the official code are those of the two companions (see their docstrings):
    the repetition is re-drawn per step, the momentum encoder starts from the online weights.
    """

    data_fields = ("anchor",)
    augmented_positive = True
