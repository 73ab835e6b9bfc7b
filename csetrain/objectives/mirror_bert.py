"""`objective=mirror_bert`: Mirror-BERT (Liu et al., arXiv 2104.08027): NT-Xent over both views of
each sentence, the second view span-masked, with optional drophead."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csetrain.config import ConfigError
from csetrain.data.collate import Batch
from csetrain.losses import cosine_matrix, top1_accuracy
from csetrain.negatives.base import NegativeMiner
from csetrain.objectives.base import Objective, ObjectiveOutput, checked_temperature


def nt_xent(
    first: Tensor, second: Tensor, temperature: float, extra: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """NT-Xent (SimCLR) with cosine similarity over the 2N embeddings of N positive pairs.

    first, second (N, D): row i of each is a pair. Every one of the 2N rows is an anchor whose
    positive is its partner and whose negatives are the 2N-2 other rows (plus `extra` (M, D), if
    given); mean cross-entropy over the 2N rows, as pytorch-metric-learning's NTXentLoss with
    labels [0..N-1, 0..N-1]. Returns (loss, logits (2N, 2N+M), targets (2N,)).
    """
    z = torch.cat([first, second])  # (2N, D)
    n = len(first)
    candidates = z if extra is None else torch.cat([z, extra.to(z.dtype)])  # (2N + M, D)
    logits = cosine_matrix(z, candidates) / temperature  # (2N, 2N + M)
    itself = torch.eye(2 * n, len(candidates), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(
        itself, float("-inf")
    )  # a row is neither its own positive nor negative
    rows = torch.arange(n, device=z.device)
    targets = torch.cat([rows + n, rows])  # (2N,) each row's partner
    return F.cross_entropy(logits.float(), targets), logits, targets


class MirrorBERT(Objective):
    """Each sentence and its span-masked copy are a positive pair; NT-Xent over all 2N views.

    Batch fields: `anchor` from the corpus; `positive` built from its raw text by
    `augmentation=span_mask` (selected in conf/objective/mirror_bert.yaml). Miner: `in_batch`
    (every view has 2N-2 negatives); a miner's extra negatives (e.g. `momentum_queue`) are added
    as negatives of all 2N rows. Temperature 0.04 (the paper's sentence setting; 0.2 for words).

    `drophead` drops whole attention heads (probability p per head per row, training forward only);
    the official code uses drophead-pytorch's forward hook on BertSelfAttention, which we follow
    (hooks on the instances, attached only around this objective's forward). Its NT-Xent is
    pytorch-metric-learning's `NTXentLoss`; `nt_xent` above is the same math. Because the hooks
    live in `embed`, drophead cannot run under GradCache (which bypasses `embed`); that
    combination is refused with one line instead of silently training without drophead.
    """

    data_fields = ("anchor",)
    augmented_positive = True

    def __init__(
        self,
        miner: NegativeMiner | None = None,
        temperature: float = 0.04,
        drophead: float = 0.0,
    ) -> None:
        super().__init__(miner)
        if not 0.0 <= drophead < 1.0:
            raise ConfigError(f"objective.drophead={drophead}: choose a probability in [0, 1)")
        self.temperature, self.drophead = checked_temperature(temperature), drophead

    def embed(self, encoder: nn.Module, batch: Batch) -> dict[str, Tensor]:
        with encoder.drophead(self.drophead):  # padded rows: drophead draws per sentence
            return super().embed(encoder, batch)

    def loss(self, views: dict[str, Tensor], batch: Batch) -> ObjectiveOutput:
        anchors, positives = views["anchor"], views["positive"]  # (B, D) each
        extra = self.miner.extra_negatives(anchors, views)
        loss, logits, targets = nt_xent(
            anchors, positives, self.temperature, extra.embeddings if extra is not None else None
        )
        return ObjectiveOutput(loss, {"acc": top1_accuracy(logits.detach(), targets)})
