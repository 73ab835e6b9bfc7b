"""Regularized: an objective plus addable terms (`regularizer=[align_uniform,mlm]`)."""

from __future__ import annotations

from torch import nn

from csetrain.data.collate import Batch
from csetrain.objectives.base import ObjectiveOutput, ObjectiveWrapper


class Regularized(ObjectiveWrapper):
    """objective loss + each regularizer's own, already weighted, loss.

    A regularizer is a module called as `regularizer(views, batch, encoder) -> ObjectiveOutput`
    on the views the objective's loss saw (GradCache's cached views under GradCache, so its
    gradient joins the replayed one); it may run its own forward (MLM) and may have a
    `bind(encoder, dataset)` that builds encoder-shaped parameters before the optimizer exists.
    Metrics: the objective's, `objective_loss`, `<name>_loss` and `<name>/<metric>`.
    """

    def __init__(self, objective: nn.Module, regularizers: dict[str, nn.Module]) -> None:
        super().__init__(objective)
        self.regularizers = nn.ModuleDict(regularizers)

    def bind(self, encoder: nn.Module, dataset=None) -> None:
        super().bind(encoder, dataset)
        for regularizer in self.regularizers.values():
            if hasattr(regularizer, "bind"):
                regularizer.bind(encoder, dataset)

    def forward(self, encoder: nn.Module, batch: Batch) -> ObjectiveOutput:
        out = self.objective(encoder, batch)
        total, metrics = out.loss, dict(out.metrics)
        metrics["objective_loss"] = out.loss.detach()
        for name, regularizer in self.regularizers.items():
            extra = regularizer(out.views, batch, encoder)
            total = total + extra.loss
            metrics[f"{name}_loss"] = extra.loss.detach()
            metrics.update({f"{name}/{k}": v for k, v in extra.metrics.items()})
        return ObjectiveOutput(total, metrics, out.views)
