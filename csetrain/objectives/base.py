"""The objective contract: `forward(encoder, batch) -> ObjectiveOutput`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from csetrain.data.collate import Batch
from csetrain.eval.diagnostics import effective_negatives
from csetrain.losses import hard_negative_offset, info_nce, top1_accuracy
from csetrain.negatives.base import NegativeMiner
from csetrain.negatives.in_batch import InBatch
from csetrain.runtime import gather_with_grad, rank_and_world


@dataclass
class ObjectiveOutput:
    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)  # tensors: `.item()` only when logged


class Objective(nn.Module):
    """Base class. `data_fields`: what the corpus must provide; `augmented_positive`: the
    `positive` view is built from the anchor by the augmentation (self-supervised)."""

    data_fields: tuple[str, ...] = ("anchor",)
    augmented_positive: bool = False
    # GradCache re-runs the encoder on chunks of the batch rows and calls `loss` once; objectives
    # whose `embed` does more than one plain forward (extra views, all layers) opt out.
    supports_grad_cache: bool = True

    def __init__(
        self, miner: NegativeMiner | None = None, regularizers: dict | None = None
    ) -> None:
        super().__init__()
        self.miner = miner if miner is not None else InBatch()
        # Addable terms (conf/regularizer/*.yaml): each returns its own, already weighted, loss.
        self.regularizers = nn.ModuleDict(regularizers or {})

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

    def forward(self, encoder: nn.Module, batch: Batch) -> ObjectiveOutput:
        self.miner.observe(batch)
        views = self.embed(encoder, batch)
        return self.add_regularizers(self.loss(views, batch), views, batch, encoder)

    def add_regularizers(
        self, out: ObjectiveOutput, views: dict[str, Tensor], batch: Batch, encoder: nn.Module
    ) -> ObjectiveOutput:
        """Objective loss + each regularizer's weighted loss; their parts appear in metrics."""
        if not self.regularizers:
            return out
        total, metrics = out.loss, dict(out.metrics)
        metrics["objective_loss"] = out.loss.detach()
        for name, regularizer in self.regularizers.items():
            extra = regularizer(views, batch, encoder)
            total = total + extra.loss
            metrics[f"{name}_loss"] = extra.loss.detach()
            metrics.update({f"{name}/{k}": v for k, v in extra.metrics.items()})
        return ObjectiveOutput(total, metrics)

    def bind(self, encoder: nn.Module, dataset=None) -> None:
        """Once, after the training dataset is tokenized and before the optimizer is built or a
        resume loads the state: the miner and regularizers build encoder-shaped state and
        parameters (momentum copies, heads) and may read the corpus (`dataset`, the tokenized
        `datasets.Dataset`). Objectives that need the corpus (clustering, neighbours) extend it."""
        self.miner.bind(encoder, dataset)
        for regularizer in self.regularizers.values():
            if hasattr(regularizer, "bind"):
                regularizer.bind(encoder, dataset)

    def batch_indices(self, step: int, indices: list[int]) -> list[int]:
        """The corpus rows of step `step`'s global batch: the sampler's `indices` unless the
        objective composes its own batches (MCL's one-cluster batches). Must be a pure function
        of the step and the objective's state, so a resumed run sees the same batches."""
        return indices

    def after_optimizer_step(self, encoder: nn.Module, batch: Batch) -> None:
        """Upkeep after the weights moved (EMA encoders, queues): delegated to the miner."""
        self.miner.after_optimizer_step(encoder, batch)


class InfoNCEObjective(Objective):
    """Anchor vs its positive, against the other rows' positives and the miner's extras."""

    def __init__(
        self,
        miner: NegativeMiner | None = None,
        regularizers: dict | None = None,
        temperature: float = 0.05,
        hard_negative_weight: float = 0.0,
    ) -> None:
        super().__init__(miner, regularizers)
        self.temperature = temperature
        self.hard_negative_weight = hard_negative_weight

    def loss(self, views: dict[str, Tensor], batch: Batch) -> ObjectiveOutput:
        anchors, positives = views["anchor"], views["positive"]  # (B, D) each
        extra = self.miner.extra_negatives(anchors, views)
        # Under DDP every rank scores its anchors against all ranks' candidates (gathered with
        # gradient); anchor i of rank r is row r*B + i of the gathered positives.
        rank, world = rank_and_world()
        first = rank * len(anchors)
        candidates = gather_with_grad(positives)  # (W*B, D)
        offset = None
        if extra is not None:
            more = gather_with_grad(extra.embeddings) if extra.gather else extra.embeddings
            if extra.aligned and self.hard_negative_weight:
                offset = hard_negative_offset(
                    len(anchors),
                    len(candidates) + len(more),
                    len(candidates) + first,
                    self.hard_negative_weight,
                    anchors.device,
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
