"""The objective contract: `forward(encoder, batch) -> ObjectiveOutput`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from csetrain.config import ConfigError
from csetrain.data.collate import Batch
from csetrain.distributed import gather_with_grad, rank_and_world
from csetrain.eval.diagnostics import effective_negatives
from csetrain.losses import hard_negative_offset, info_nce, own_candidates_nce, top1_accuracy
from csetrain.negatives.base import NegativeMiner
from csetrain.negatives.in_batch import InBatch


@dataclass
class ObjectiveOutput:
    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)  # tensors: `.item()` only when logged
    views: dict[str, Tensor] | None = None  # the embedded views the loss saw (for regularizers)


def checked_temperature(value: float, key: str = "objective.temperature") -> float:
    """`value` if it is a finite number > 0 (logits are divided by it), else a ConfigError."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}={value}: must be a finite number > 0")
    return value


class Objective(nn.Module):
    """Base class. `data_fields`: what the corpus must provide; `augmented_positive`: the
    `positive` view is built from the anchor by the augmentation (self-supervised);
    `row_wise_embed`: `embed` of a sub-batch gives those rows' views of the whole batch, so
    GradCache may embed in chunks (false when embedding couples the rows, e.g. whitening)."""

    data_fields: tuple[str, ...] = ("anchor",)
    augmented_positive: bool = False
    row_wise_embed: bool = True

    def __init__(self, miner: NegativeMiner | None = None) -> None:
        super().__init__()
        self.miner = miner if miner is not None else InBatch()

    @property
    def required_data_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.data_fields + self.miner.fields))

    def embed(self, encoder: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """One forward pass over every view of the batch -> {field: (B, D)}."""
        return batch.split(encoder(batch.input_ids, batch.attention_mask))

    def loss(self, views: dict[str, Tensor], batch: Batch) -> ObjectiveOutput:
        """The objective's math on the embedded views (kept apart from `embed` so GradCache can
        run the encoder in chunks and the loss once)."""
        raise NotImplementedError

    def forward(self, encoder: nn.Module, batch: Batch, embed=None) -> ObjectiveOutput:
        """Embed the batch (with `embed(encoder, batch)` in place of `self.embed` if given:
        GradCache's chunked embedding), then the loss; the views travel with the output."""
        self.miner.observe(batch)
        views = (embed or self.embed)(encoder, batch)
        out = self.loss(views, batch)
        out.views = views
        return out

    def bind(self, encoder: nn.Module, dataset=None) -> None:
        """Once, after the training dataset is tokenized and before the optimizer is built or a
        resume loads the state: the miner builds encoder-shaped state and parameters (momentum
        copies) and may read the corpus (`dataset`, the tokenized `datasets.Dataset`).
        Objectives that need the corpus (clustering, neighbours) extend it."""
        self.miner.bind(encoder, dataset)

    def batch_indices(self, step: int, indices: list[int]) -> list[int]:
        """The corpus rows of step `step`'s global batch: the sampler's `indices` unless the
        objective composes its own batches (MCL's one-cluster batches). Must be a pure function
        of the step and the objective's state, so a resumed run sees the same batches."""
        return indices

    def after_optimizer_step(self, encoder: nn.Module, batch: Batch) -> None:
        """Upkeep after the weights moved (EMA encoders, queues): delegated to the miner."""
        self.miner.after_optimizer_step(encoder, batch)


class ObjectiveWrapper(nn.Module):
    """Runs an objective differently (in chunks, with added terms) and passes the rest of the
    objective contract through, so the loop drives a wrapped objective like a bare one."""

    def __init__(self, objective: nn.Module) -> None:
        super().__init__()
        self.objective = objective

    @property
    def miner(self) -> NegativeMiner:
        return self.objective.miner

    @property
    def data_fields(self) -> tuple[str, ...]:
        return self.objective.data_fields

    @property
    def required_data_fields(self) -> tuple[str, ...]:
        return self.objective.required_data_fields

    @property
    def augmented_positive(self) -> bool:
        return self.objective.augmented_positive

    @property
    def inner(self) -> Objective:
        """The wrapped objective itself, under every wrapper."""
        return getattr(self.objective, "inner", self.objective)

    def bind(self, encoder: nn.Module, dataset=None) -> None:
        self.objective.bind(encoder, dataset)

    def batch_indices(self, step: int, indices: list[int]) -> list[int]:
        return self.objective.batch_indices(step, indices)

    def after_optimizer_step(self, encoder: nn.Module, batch: Batch) -> None:
        self.objective.after_optimizer_step(encoder, batch)


class InfoNCEObjective(Objective):
    """Anchor vs its positive, against the other rows' positives and the miner's extras."""

    def __init__(
        self,
        miner: NegativeMiner | None = None,
        temperature: float = 0.05,
        hard_negative_weight: float = 0.0,
    ) -> None:
        super().__init__(miner)
        self.temperature = checked_temperature(temperature)
        self.hard_negative_weight = hard_negative_weight

    def loss(self, views: dict[str, Tensor], batch: Batch) -> ObjectiveOutput:
        anchors, positives = views["anchor"], views["positive"]  # (B, D) each
        extra = self.miner.extra_negatives(anchors, views)
        if not getattr(batch, "in_batch_negatives", True):  # a data=mix source set it false
            return self.own_candidates_loss(anchors, positives, extra)
        # Under DDP every rank scores its anchors against all ranks' candidates (gathered with
        # gradient); anchor i of rank r is row r*B + i of the gathered positives.
        rank, world = rank_and_world()
        first = rank * len(anchors)
        candidates = gather_with_grad(positives)  # (W*B, D)
        offset = None
        if extra is not None:
            more = gather_with_grad(extra.embeddings) if extra.gather else extra.embeddings
            if extra.aligned and self.hard_negative_weight:
                # this rank's extras (k blocks of B rows) start at rank*k*B of the gathered ones
                own = first * extra.blocks if extra.gather else 0
                offset = hard_negative_offset(
                    len(anchors),
                    len(candidates) + len(more),
                    len(candidates) + own,
                    self.hard_negative_weight,
                    anchors.device,
                    extra.blocks,
                )
            candidates = torch.cat([candidates, more])  # (W*B + M, D)
        targets = first + torch.arange(len(anchors), device=anchors.device)
        loss, logits = info_nce(anchors, candidates, targets, self.temperature, offset)
        logits = logits.detach()
        return ObjectiveOutput(
            loss,
            {
                "acc": top1_accuracy(logits, targets),
                # how many negatives the gradient effectively weighs (perplexity of their softmax)
                "effective_negatives": effective_negatives(logits, targets),
            },
        )

    def own_candidates_loss(self, anchors: Tensor, positives: Tensor, extra) -> ObjectiveOutput:
        """Each anchor against its own positive and its own (aligned) hard negatives only: no
        other row of the batch, no other rank's rows. Aligned extras of M = K*B rows hold
        anchor i's k-th negative at row k*B + i (field-major, like Batch)."""
        if extra is None or not extra.aligned:
            raise ConfigError(
                "in_batch_negatives=false leaves an anchor only its own hard negatives, and this "
                "batch has none: use negative_mining=hard_from_data with data that has hard_negative"
            )
        rows, dim = anchors.shape
        own = extra.embeddings.reshape(-1, rows, dim).transpose(0, 1)  # (B, K, D)
        loss, logits = own_candidates_nce(
            anchors, positives, own, self.temperature, self.hard_negative_weight
        )
        logits = logits.detach()
        targets = torch.zeros(rows, dtype=torch.long, device=anchors.device)
        return ObjectiveOutput(
            loss,
            {
                "acc": top1_accuracy(logits, targets),
                "effective_negatives": effective_negatives(logits, targets),
            },
        )
