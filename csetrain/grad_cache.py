"""GradCache (Gao et al. 2021, arXiv 2101.06983): a batch of any size in the memory of a chunk.

`GradCache(objective, chunk_size, runtime)` is a wrapper the objective runs through: its forward
embeds the batch `chunk_size` examples at a time (every view of each example, through the
objective's own `embed`) without a graph, recording the device RNG state before each chunk, and
runs the objective's loss once on those embeddings, held as leaves of the graph. When the loop
calls `backward` on that loss, the gradient reaching the embeddings is the cache: each chunk is
embedded again with a graph, *replaying its recorded RNG state* so dropout draws the same masks
(otherwise unsupervised SimCSE's two views would differ between the passes), and the cached
gradient is back-propagated through it (as sentence-transformers' cached losses do). Parameter
gradients equal those of the chunked forward in one graph; with dropout off they equal the
full-batch gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from csetrain.config import ConfigError
from csetrain.data.collate import Batch
from csetrain.losses import upcast
from csetrain.objectives.base import ObjectiveOutput, ObjectiveWrapper


class _ReplayOnBackward(torch.autograd.Function):
    """Identity on the cached embeddings; its backward hands their gradients to `replay`."""

    @staticmethod
    def forward(ctx, replay, *embeddings: Tensor):
        ctx.replay = replay
        return tuple(e.view_as(e) for e in embeddings)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        ctx.replay(grads)
        return (None, *(None for _ in grads))


class GradCache(ObjectiveWrapper):
    """Runs `objective` with its embedding done in chunks of `chunk_size` examples."""

    def __init__(self, objective: nn.Module, chunk_size: int, runtime) -> None:
        super().__init__(objective)
        if not getattr(objective, "row_wise_embed", True):
            raise ConfigError(
                f"{type(objective).__name__} embeds the batch as a whole (its rows are coupled): "
                "set trainer.grad_cache.chunk_size=0"
            )
        self.chunk_size, self.runtime = chunk_size, runtime

    def forward(self, encoder: nn.Module, batch: Batch) -> ObjectiveOutput:
        return self.objective(encoder, batch, embed=self.cached_embed)

    def cached_embed(self, encoder: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """Pass 1: the views of every chunk, no graph; leaves whose backward runs pass 2."""
        spans = [
            (start, min(start + self.chunk_size, batch.size))
            for start in range(0, batch.size, self.chunk_size)
        ]
        chunks = [batch.examples(start, end) for start, end in spans]
        states, parts = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(self.runtime.rng_state())
                parts.append(self.objective.embed(encoder, chunk))
        names = list(parts[0])
        cached = [torch.cat([upcast(p[n]) for p in parts]).requires_grad_() for n in names]

        def replay(grads: tuple[Tensor, ...]) -> None:
            with torch.enable_grad(), self.runtime.fork_rng():
                for (start, end), chunk, state in zip(spans, chunks, states):
                    self.runtime.set_rng_state(state)
                    with self.runtime.autocast():
                        views = self.objective.embed(encoder, chunk)
                    outputs = [upcast(views[n]) for n in names]
                    torch.autograd.backward(outputs, [g[start:end] for g in grads])

        return dict(zip(names, _ReplayOnBackward.apply(replay, *cached)))
