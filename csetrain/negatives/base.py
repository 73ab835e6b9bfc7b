"""The miner contract shared by every `negative_mining` option."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Negatives:
    """Extra negative candidates (M, D). `aligned`: row j*B + i is anchor i's own j-th hard
    negative, in `blocks` blocks of B rows (so SimCSE's hard-negative weight applies to each).
    `gather`: per-rank rows that DDP shares with every rank (batch-derived); False for global
    state such as a queue (ESimCSE's queue is never gathered)."""

    embeddings: Tensor
    aligned: bool = False
    gather: bool = True
    blocks: int = 1


class NegativeMiner(nn.Module):
    """`fields` are extra batch fields the objective must encode in its forward pass; state lives
    in registered buffers/submodules so it checkpoints and resumes with the objective.

    Upkeep is not an `update(keys)` call: the hook receives the encoder and the batch instead,
    because a momentum queue must encode the batch with its own (EMA) encoder to get its keys.
    """

    fields: tuple[str, ...] = ()

    def bind(self, encoder: nn.Module, dataset=None) -> None:
        """Called once before training (and before a resume loads the state) with the online
        encoder and the tokenized training dataset (`<field>_ids` columns): miners that mirror
        the encoder (momentum copies) build their modules here, miners that index the corpus
        take its token ids from `dataset` (no second tokenization)."""

    def observe(self, batch) -> None:
        """The step's token batch (this rank's rows), before the objective embeds it: miners that
        re-read the batch's sentences (mined_index's guide model) keep what they need."""

    def extra_negatives(self, anchors: Tensor, views: dict[str, Tensor]) -> Negatives | None:
        """Extra candidates for this step's anchors (B, D), or None for in-batch only."""
        return None

    def after_optimizer_step(self, encoder: nn.Module, batch) -> None:
        """Called once per step after the optimizer step (queues, banks, EMA encoders)."""


def take_saved_shapes(module: nn.Module, state_dict: dict, prefix: str, names: tuple[str, ...]):
    """Resize buffers whose size is only known once built (an index, cluster labels) to the
    saved tensors' shapes, so `load_state_dict` can copy into them; call it first thing in a
    module's `_load_from_state_dict`."""
    for name in names:
        saved = state_dict.get(prefix + name)
        if saved is not None:
            device = getattr(module, name).device
            setattr(module, name, torch.empty_like(saved, device=device))
