"""`objective=mirror_bert`: Mirror-BERT (Liu et al., arXiv 2104.08027): NT-Xent over both views of
each sentence, the second view span-masked, with optional drophead."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csetrain.config import ConfigError, CsetrainError
from csetrain.data.collate import Batch
from csetrain.losses import cosine_matrix, top1_accuracy
from csetrain.negatives.base import NegativeMiner
from csetrain.objectives.base import Objective, ObjectiveOutput


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


def _drop_heads(module: nn.Module, args, output, p: float):
    """Forward hook on a self-attention module: zero whole heads of its context output, each head
    of each row with probability p, rescaled by heads / kept heads (drophead, Zhou et al. 2020)."""
    if not module.training:
        return output
    context = output[0]  # (N, L, H * d)
    rows, length, _ = context.shape
    heads = module.num_attention_heads
    keep = torch.bernoulli(torch.full((rows, 1, heads, 1), 1.0 - p, device=context.device))
    kept = keep.sum(dim=2, keepdim=True).clamp(min=1.0)  # all heads dropped -> zeros, not NaN
    scaled = context.view(rows, length, heads, -1) * (keep * heads / kept).to(context.dtype)
    return (scaled.view(rows, length, -1), *output[1:])


def self_attention_modules(transformer: nn.Module) -> list[nn.Module]:
    """The per-layer self-attention modules (BERT/RoBERTa families: `*SelfAttention` with heads)."""
    return [
        m
        for m in transformer.modules()
        if type(m).__name__.endswith("SelfAttention") and hasattr(m, "num_attention_heads")
    ]


@contextmanager
def drop_heads(transformer: nn.Module, p: float):
    """Drophead on every self-attention layer of `transformer` for the duration of the block.

    Forward hooks on the module instances (no model class is patched) and removed on exit, so
    evaluation, export and a momentum encoder copied from the transformer never see them.
    transformers 5.x has no `head_mask` argument any more, hence hooks on the attention output.
    """
    if not p:
        yield
        return
    modules = self_attention_modules(transformer)
    if not modules:
        raise ConfigError(
            f"objective.drophead={p}: {type(transformer).__name__} has no *SelfAttention modules "
            "with heads; set objective.drophead=0"
        )
    handles = [m.register_forward_hook(partial(_drop_heads, p=p)) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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
        regularizers: dict | None = None,
        temperature: float = 0.04,
        drophead: float = 0.0,
    ) -> None:
        super().__init__(miner, regularizers)
        if not 0.0 <= drophead < 1.0:
            raise ConfigError(f"objective.drophead={drophead}: choose a probability in [0, 1)")
        self.temperature, self.drophead = temperature, drophead
        self._embedded_with_drophead = False

    def embed(self, encoder: nn.Module, batch: Batch) -> dict[str, Tensor]:
        # Drophead draws per batch row, so it needs one sentence per row: no packed forward.
        packing, encoder.packing = encoder.packing, encoder.packing and not self.drophead
        try:
            with drop_heads(encoder.transformer, self.drophead):
                views = super().embed(encoder, batch)
        finally:
            encoder.packing = packing
        self._embedded_with_drophead = True
        return views

    def loss(self, views: dict[str, Tensor], batch: Batch) -> ObjectiveOutput:
        if self.drophead and not self._embedded_with_drophead:
            raise CsetrainError(
                f"objective.drophead={self.drophead} needs the objective's own forward pass: "
                "set trainer.grad_cache.chunk_size=0 or objective.drophead=0"
            )
        self._embedded_with_drophead = False
        anchors, positives = views["anchor"], views["positive"]  # (B, D) each
        extra = self.miner.extra_negatives(anchors, views)
        loss, logits, targets = nt_xent(
            anchors, positives, self.temperature, extra.embeddings if extra is not None else None
        )
        return ObjectiveOutput(loss, {"acc": top1_accuracy(logits.detach(), targets)})
