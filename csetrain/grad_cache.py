"""GradCache (Gao et al. 2021, arXiv 2101.06983): a batch of any size in the memory of a chunk.

Pass 1 embeds the batch chunk by chunk without a graph, recording the RNG state before each
chunk; the loss runs once on the detached embeddings and its gradient w.r.t. them is cached;
pass 2 re-embeds each chunk with a graph, *replaying the recorded RNG state* so dropout draws
the same masks (otherwise unsupervised SimCSE's two views would differ between the passes), and
back-propagates the cached gradient. Parameter gradients equal those of the chunked forward in
one graph; with dropout off they equal the full-batch gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from csetrain.data.collate import Batch
from csetrain.objectives.base import ObjectiveOutput


def _chunks(rows: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, rows)) for start in range(0, rows, size)]


def _rng_state(device: torch.device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _embed_chunk(encoder, batch: Batch, start: int, end: int) -> Tensor:
    mask = batch.attention_mask[start:end]
    width = int(mask.sum(1).max())  # trim the chunk's own padding
    return encoder(batch.input_ids[start:end, :width], mask[:, :width])


def grad_cache_step(objective, encoder, batch: Batch, chunk_size: int, runtime) -> ObjectiveOutput:
    """Forward + backward of `objective` on `batch`, `chunk_size` rows of the encoder at a time.
    Leaves the gradients in `.grad` like `runtime.backward(objective(encoder, batch).loss)`."""
    objective.miner.observe(batch)  # as objective.forward does
    device = batch.input_ids.device
    spans = _chunks(batch.input_ids.shape[0], chunk_size)
    states, parts = [], []
    with torch.no_grad():
        for start, end in spans:
            states.append(_rng_state(device))
            with runtime.autocast():
                parts.append(_embed_chunk(encoder, batch, start, end))
    embeddings = (
        torch.cat(parts).float().requires_grad_()
    )  # (F*B, D), a leaf: its grad is the cache
    with runtime.autocast():
        views = batch.split(embeddings)
        out = objective.add_regularizers(objective.loss(views, batch), views, batch, encoder)
    runtime.backward(out.loss)  # loss-scaled under fp16, consistently with pass 2
    cached = embeddings.grad
    after = _rng_state(device)
    for (start, end), state in zip(spans, states):
        _set_rng_state(device, state)
        with runtime.autocast():
            part = _embed_chunk(encoder, batch, start, end)
        part.float().backward(cached[start:end])
    _set_rng_state(device, after)
    return ObjectiveOutput(out.loss.detach(), out.metrics)
