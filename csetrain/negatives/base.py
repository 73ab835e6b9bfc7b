"""The miner contract shared by every `negative_mining` option."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass
class Negatives:
    """Extra negative candidates (M, D). `aligned` means row i is anchor i's own hard negative
    (so SimCSE's hard-negative weight applies to the diagonal of this block)."""

    embeddings: Tensor
    aligned: bool = False


class NegativeMiner(nn.Module):
    """`fields` are extra batch fields the objective must encode in its forward pass; state lives
    in registered buffers so it checkpoints and resumes with the model."""

    fields: tuple[str, ...] = ()

    def extra_negatives(self, anchors: Tensor, views: dict[str, Tensor]) -> Negatives | None:
        return None

    def update(self, keys: Tensor) -> None:
        """Called after the optimizer step with this step's keys (for queues/banks)."""
