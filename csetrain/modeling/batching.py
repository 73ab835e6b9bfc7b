"""Inference batches: sentences sorted by token length, each batch capped in sentences and, on a
CPU, in padded tokens.

Why a token cap: on a CPU the transformer is bound by how much of a batch's activations stay in
cache, not by the number of GEMM calls. Measured with all-MiniLM-L6-v2 on 2 cores at batch size
128 (`scripts/bench_batching.py`, texts/s, before the oneDNN linears of onednn.py): 256-token
SciFact abstracts 17.4 uncapped vs 26.7 with 1,024 tokens (batches of 4), 75-token SummEval
summaries 59.2 vs 87.8, 15-token Banking77 queries 197 vs 382 (batches of ~64); budgets of
512 to 2,048 tokens are within noise of each other. One budget serves every length: short texts
still fill large batches, long ones get small ones. On a GPU larger batches keep the device busy, so there the cap is off. The
embeddings do not depend on the batching beyond float summation order (padding is masked out).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

CPU_BATCH_TOKENS = 1024  # padded tokens per batch on a CPU; measured, see the module docstring


def batch_token_budget(device: torch.device, batch_tokens: int | None = None) -> int | None:
    """The padded-token cap for inference batches on `device` (None: no cap)."""
    if batch_tokens is not None:
        return batch_tokens or None  # 0 turns the cap off
    return CPU_BATCH_TOKENS if device.type == "cpu" else None


def length_sorted_batches(
    lengths: list[int], batch_size: int, max_tokens: int | None = None
) -> list[list[int]]:
    """Indices into `lengths`, longest first, cut into batches of at most `batch_size` items and
    (if `max_tokens`) at most `max_tokens` padded tokens: a batch pads to its first, longest
    item, so it holds max_tokens // that length items (always at least one)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, start = [], 0
    while start < len(order):
        size = batch_size
        if max_tokens:
            size = max(1, min(size, max_tokens // max(1, lengths[order[start]])))
        batches.append(order[start : start + size])
        start += size
    return batches


def padded_batches(tokenizer, ids: list[list[int]], batches: list[list[int]], progress=False):
    """(indices, tokenizer.pad's tensors) for each batch of `ids`, with a progress bar if asked."""
    for idx in tqdm(batches, desc="encode", disable=not progress, leave=False):
        yield idx, tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
