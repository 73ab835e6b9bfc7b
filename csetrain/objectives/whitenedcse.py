"""`objective=whitenedcse`: WhitenedCSE (Zhuo et al., ACL 2023, arXiv 2305.17746).

Shuffled group whitening (SGW) in the training-only head plus one InfoNCE per extra positive.
The pure math (`group_whitening_matrices`, `shuffled_group_whiten`) is at the top of the module.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from csetrain.config import ConfigError
from csetrain.data.collate import Batch
from csetrain.losses import info_nce, top1_accuracy
from csetrain.negatives.base import NegativeMiner
from csetrain.objectives.base import Objective, ObjectiveOutput, checked_temperature

# The paper's BERT-base setting: 128 groups of 768 channels = 6 channels per group. With
# `num_groups: null` we keep that group size where it divides the hidden size (MiniLM's 384 -> 64
# groups) and take the largest smaller one that does elsewhere (the tiny model's 32 -> 4, 8 groups).
PAPER_GROUP_SIZE = 6


def group_whitening_matrices(x: Tensor, eps: float) -> Tensor:
    """ZCA matrices of grouped, centred data x (G, B, C) -> W (G, C, C), W = U diag((λ+eps)^-½) Uᵀ
    with (λ, U) the eigen-pairs of each group's covariance xᵀx / B."""
    cov = x.transpose(1, 2) @ x / x.shape[1]  # (G, C, C)
    eigvals, eigvecs = torch.linalg.eigh(cov)  # (G, C), (G, C, C)
    scale = (eigvals.clamp(min=0) + eps).rsqrt()  # clamp: round-off can make λ slightly < 0
    return eigvecs @ torch.diag_embed(scale) @ eigvecs.transpose(1, 2)


def shuffled_group_whiten(x: Tensor, perm: Tensor, num_groups: int, eps: float = 1e-5) -> Tensor:
    """SGW of one view x (B, D): permute the channels by `perm` (D,), split them into `num_groups`
    consecutive groups, centre and ZCA-whiten each group over the batch, undo the permutation.

    The whitening matrices are computed from `x.detach()` and applied to the live, centred x, so
    no gradient flows through them (the paper's code re-wraps the covariance as a new leaf); the
    centring itself stays differentiable, as in that code. Runs in float32 even under autocast:
    an eigendecomposition of a bf16/fp16 covariance is too coarse.
    """
    batch, dim = x.shape
    with torch.autocast(x.device.type, enabled=False):
        shuffled = x[:, perm].float().reshape(batch, num_groups, dim // num_groups)
        shuffled = shuffled.transpose(0, 1)  # (G, B, C)
        centred = shuffled - shuffled.mean(dim=1, keepdim=True)
        with torch.no_grad():
            whitening = group_whitening_matrices(centred.detach(), eps)  # (G, C, C), a constant
        white = (centred @ whitening).transpose(0, 1).reshape(batch, dim)  # (B, D), permuted
    return white[:, torch.argsort(perm)]


class WhitenedCSE(Objective):
    """Unsupervised SimCSE with `num_pos` dropout views per sentence and shuffled group whitening.

    Batch fields: `anchor` from the corpus; `positive` made by the augmentation
    (`augmentation=dropout`); views 3.. are the anchor rows run again in the same forward pass
    (one encoder call on num_pos*B rows: [anchor; positive; anchor; ...], each block of B rows
    is one view, so every view is a contiguous slice). Miner: `in_batch`.

    Each view is whitened separately, with its own fresh random channel permutation (the source
    of the extra positive diversity), in `num_groups` groups, *before* the encoder's MLP head
    (dense + tanh, `model.mlp_head=train_only` as in the paper, so the head and the whitening are
    both dropped at test time; with `mlp_head=none` whitening is the last training operation).
    Loss = sum over views k >= 2 of InfoNCE(view 1 vs view k), each against the in-batch rows of
    view k (plus a miner's extras, which are not whitened), temperature 0.05.

    Where the released code (SupstarZh/WhitenedCSE) differs and what we follow: it does not run
    as published (its `models.py` passes a positional argument after a keyword one, imports
    modules shipped only as `.pyc`, and its `train.py` lacks the `--num_pos` its README passes),
    so the paper is the spec. Its head flattens the views
    interleaved (s0v1, s0v2, s0v3, s1v1, ...) but its SGW module slices contiguous thirds, so its
    "views" mix sentences; our field-major layout makes each third one view, as the paper
    describes. `torch.symeig` (removed from PyTorch) becomes `torch.linalg.eigh` with `eps` added
    to the eigenvalues (the code takes rsqrt of raw eigenvalues). Its covariance divides by B
    (we do too) and it runs the decomposition on CPU (we run it where the batch is).
    """

    data_fields = ("anchor",)
    augmented_positive = True
    row_wise_embed = False  # whitening statistics couple the rows of the batch

    def __init__(
        self,
        miner: NegativeMiner | None = None,
        temperature: float = 0.05,
        num_pos: int = 3,
        num_groups: int | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__(miner)
        if num_pos < 2:
            raise ConfigError(f"objective.num_pos={num_pos}: needs at least 2 views (anchor + 1)")
        if num_groups is not None and num_groups < 1:
            raise ConfigError(f"objective.num_groups={num_groups}: use a positive divisor of D")
        self.temperature, self.num_pos, self.num_groups, self.eps = (
            checked_temperature(temperature),
            num_pos,
            num_groups,
            eps,
        )

    def groups_for(self, dim: int) -> int:
        """The configured group count, checked against the hidden size D; with `num_groups:
        null`, D / c for c the largest group size <= the paper's 6 that divides D (768 -> 128,
        384 -> 64, 32 -> 8), so every hidden size gets groups no wider than the paper's."""
        groups = self.num_groups
        if groups is None:
            size = max(c for c in range(1, PAPER_GROUP_SIZE + 1) if dim % c == 0)
            groups = dim // size
        if dim % groups:
            raise ConfigError(
                f"objective.num_groups={groups} does not divide the hidden size {dim}: choose a divisor of {dim}"
            )
        return groups

    def embed(self, encoder: nn.Module, batch: Batch) -> dict[str, Tensor]:
        if getattr(encoder, "mlp_head", "none") == "always":
            raise ConfigError(
                "objective=whitenedcse whitens inside a train-only head: set model.mlp_head=train_only (or none)"
            )
        size, extra = batch.size, self.num_pos - 2
        ids = torch.cat([batch.input_ids] + [batch.input_ids[:size]] * extra)
        mask = torch.cat([batch.attention_mask] + [batch.attention_mask[:size]] * extra)
        pooled = encoder(ids, mask, head=False)  # (F*B + extra*B, D), one forward
        groups = self.groups_for(pooled.shape[1])
        names = [*batch.fields, *[f"positive{k}" for k in range(2, 2 + extra)]]
        views = {}
        for name, view in zip(names, pooled.split(size)):
            perm = torch.randperm(view.shape[1], device=view.device)  # fresh for every view
            white = shuffled_group_whiten(view, perm, groups, self.eps)
            views[name] = encoder.project(white)
        return views

    def positive_names(self) -> list[str]:
        return ["positive", *[f"positive{k}" for k in range(2, self.num_pos)]]

    def loss(self, views: dict[str, Tensor], batch: Batch) -> ObjectiveOutput:
        names = self.positive_names()
        anchors = views["anchor"]
        targets = torch.arange(len(anchors), device=anchors.device)
        extra = self.miner.extra_negatives(anchors, views)
        total, metrics = anchors.new_zeros(()).float(), {}
        for name in names:
            candidates = (
                views[name] if extra is None else torch.cat([views[name], extra.embeddings])
            )
            loss, logits = info_nce(anchors, candidates, targets, self.temperature)
            total = total + loss
            metrics[f"loss_{name}"] = loss.detach()
            metrics.setdefault("acc", top1_accuracy(logits.detach(), targets))
        return ObjectiveOutput(total, metrics)
