"""`objective=2dmse`: 2D Matryoshka Sentence Embeddings (Li et al., arXiv 2402.14776).

The option is named `2dmse` (the paper's name) but a Python module cannot start with a digit,
so the module is `matryoshka_2d` and the class `Matryoshka2D`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csetrain.config import ConfigError
from csetrain.data.collate import Batch
from csetrain.losses import info_nce, top1_accuracy
from csetrain.negatives.base import NegativeMiner
from csetrain.objectives.base import Objective, ObjectiveOutput, checked_temperature
from csetrain.seeding import draw_generator


def geometric_dims(hidden_size: int, base: int = 8) -> list[int]:
    """8, 16, 32, ... strictly below the hidden size (the AnglE trainer's size list)."""
    dims, d = [], base
    while d < hidden_size:
        dims.append(d)
        d *= 2
    return dims


def similarity_kl(teacher_logits: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """KL(p ‖ q) of the row-wise in-batch similarity distributions, p = softmax(teacher/T)
    (detached: the last layer teaches, it is not pulled towards the shallow layer) and
    q = softmax(student/T); mean over rows. Logits (B, B) -> scalar."""
    p = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(log_q, p, reduction="batchmean")


class Matryoshka2D(Objective):
    """Unsupervised SimCSE views trained so that every (layer, prefix size) is an embedding.

    Batch fields: `anchor` from the corpus, `positive` made by the augmentation
    (`augmentation=dropout`). Miner: `in_batch` only (extra negatives have no per-layer copies).
    One forward pass returns every layer (`encoder.embed_layers`); the encoder's head (if any)
    is applied to the two layers used. Each step draws a layer ℓ uniformly from 1..L-1 and a
    prefix size d from `dims` (default 8, 16, 32, ... < hidden), from a generator seeded by
    (seed, step), so the draw is a function of the step and resumes exactly.

    Loss (the AnglE 2DMSE trainer's weighting, Feb 2024; with every weight 1 it is exactly that
    trainer's sum), with L(n, k) = InfoNCE(temperature) of layer n's embeddings cut to k dims,
    N the last layer, D the hidden size, T = kl_temperature:

        loss = last_weight  * [L(N, D) + dim_weight * L(N, d)]
             + layer_weight / ℓ * [L(ℓ, D) + dim_weight * L(ℓ, d)]
             + kl_weight * T * log(2 + ℓ) * KL(p_N ‖ q_ℓ)

    where p_N, q_ℓ are softmax(cos/temperature/T) over each anchor's in-batch candidates at full
    size. Deviations: the base loss is InfoNCE on unsupervised dropout views (the paper trains the
    AnglE loss on NLI) so 2DMSE is comparable with the other csetrain objectives; the KL compares
    in-batch similarity distributions, whereas the AnglE trainer (and sentence-transformers'
    AdaptiveLayerLoss) softmax each embedding over its own coordinates; the teacher side is
    detached (as sentence-transformers does since #3757; the AnglE trainer lets it get gradient).
    sentence-transformers' Matryoshka2dLoss weights differently (prior layers by 1/(1+idx), KL by
    kl_temperature=0.3, dims from MatryoshkaLoss); that is not what this implements.
    """

    data_fields = ("anchor",)
    augmented_positive = True

    def __init__(
        self,
        miner: NegativeMiner | None = None,
        temperature: float = 0.05,
        dims: list[int] | None = None,
        last_weight: float = 1.0,
        layer_weight: float = 1.0,
        dim_weight: float = 1.0,
        kl_weight: float = 1.0,
        kl_temperature: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(miner)
        checked_temperature(kl_temperature, "objective.kl_temperature")
        self.temperature = checked_temperature(temperature)
        self.dims = list(dims) if dims else None
        self.last_weight, self.layer_weight, self.dim_weight = last_weight, layer_weight, dim_weight
        self.kl_weight, self.kl_temperature, self.seed = kl_weight, kl_temperature, seed
        # Optimizer steps taken: the (layer, dim) draw is a function of it, and it checkpoints.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.num_layers: int | None = None  # set by `embed` from the encoder

    def sizes(self, hidden_size: int) -> list[int]:
        """The prefix sizes to draw from, checked against the hidden size."""
        dims = self.dims or geometric_dims(hidden_size)
        bad = [d for d in dims if not 1 <= d < hidden_size]
        if bad or not dims:
            raise ConfigError(
                f"objective.dims={dims}: each size must be in 1..{hidden_size - 1} (below the hidden size)"
            )
        return dims

    def sample(self, step: int, num_layers: int, hidden_size: int) -> tuple[int, int]:
        """(layer ℓ in 1..L-1, prefix size d) for `step`, a pure function of (seed, step)."""
        if num_layers < 2:
            raise ConfigError("objective=2dmse needs an encoder with at least 2 layers")
        gen = draw_generator(self.seed, step)
        layer = int(torch.randint(1, num_layers, (), generator=gen))
        dims = self.sizes(hidden_size)
        return layer, dims[int(torch.randint(len(dims), (), generator=gen))]

    def embed(self, encoder: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """{anchor, positive}: last layer; {anchor_layer, positive_layer}: layer ℓ. Head applied."""
        self.num_layers = encoder.num_layers  # what `loss` draws ℓ from (it sees no encoder)
        layer, _ = self.sample(int(self.step), encoder.num_layers, encoder.hidden_size)
        layers = encoder.embed_layers(batch.input_ids, batch.attention_mask)  # L x (2B, D)
        views = {}
        for suffix, z in (("", layers[-1]), ("_layer", layers[layer - 1])):
            views.update({f"{name}{suffix}": v for name, v in batch.split(z).items()})
        return views

    def loss(self, views: dict[str, Tensor], batch: Batch) -> ObjectiveOutput:
        layer, dim = self.sample(int(self.step), self.num_layers, views["anchor"].shape[1])
        return self.terms(views, layer, dim)

    def _info_nce(self, anchors: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
        targets = torch.arange(len(anchors), device=anchors.device)
        return info_nce(anchors, positives, targets, self.temperature)

    def terms(self, views: dict[str, Tensor], layer: int, dim: int) -> ObjectiveOutput:
        """The weighted sum above for a given (ℓ, d); each term is logged."""
        if self.miner.extra_negatives(views["anchor"], views) is not None:
            raise ConfigError(
                "objective=2dmse uses in-batch negatives only: set negative_mining=in_batch"
            )
        a, p = views["anchor"], views["positive"]
        a_l, p_l = views["anchor_layer"], views["positive_layer"]
        last_full, last_logits = self._info_nce(a, p)
        layer_full, layer_logits = self._info_nce(a_l, p_l)
        last_cut, _ = self._info_nce(a[:, :dim], p[:, :dim])
        layer_cut, _ = self._info_nce(a_l[:, :dim], p_l[:, :dim])
        kl = similarity_kl(last_logits, layer_logits, self.kl_temperature)
        t = self.kl_temperature
        loss = (
            self.last_weight * (last_full + self.dim_weight * last_cut)
            + self.layer_weight / layer * (layer_full + self.dim_weight * layer_cut)
            + self.kl_weight * t * math.log(2 + layer) * kl
        )
        targets = torch.arange(len(a), device=a.device)
        metrics = {
            "loss_last": last_full.detach(),
            "loss_layer": layer_full.detach(),
            "loss_last_cut": last_cut.detach(),
            "loss_layer_cut": layer_cut.detach(),
            "kl": kl.detach(),
            "layer": torch.tensor(float(layer)),
            "dim": torch.tensor(float(dim)),
            "acc": top1_accuracy(last_logits.detach(), targets),
        }
        return ObjectiveOutput(loss, metrics)

    def after_optimizer_step(self, encoder: nn.Module, batch: Batch) -> None:
        self.step += 1
        super().after_optimizer_step(encoder, batch)
