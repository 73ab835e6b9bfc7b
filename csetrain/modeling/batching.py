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

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

import torch
from tqdm.auto import tqdm

from csetrain.modeling.onednn import is_plain, prepacked_linears

CPU_BATCH_TOKENS = 1024  # padded tokens per batch on a CPU; measured, see the module docstring
MAX_CPU_WORKERS = 4  # batches in flight at once on a CPU; the rest of the threads go inside each


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


def embed_in_batches(
    module: torch.nn.Module,
    tokenizer,
    ids: list[list[int]],
    embed: Callable,
    batch_size: int,
    width: int,
    batch_tokens: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """`embed(input_ids, attention_mask)` of every row of `ids`, float32 on the CPU, in order:
    (len(ids), width), or (len(ids), ...) as the first batch's rows are shaped.

    Batches are length-sorted and capped (`batch_token_budget`); on a CPU they run one per
    worker thread (`batch_runner`) on oneDNN's prepacked linears where those win (onednn.py).
    `module` is the model `embed` runs, already in eval mode."""
    device = next(module.parameters()).device
    budget = batch_token_budget(device, batch_tokens)
    batches = length_sorted_batches(list(map(len, ids)), batch_size, budget)
    padded = (
        tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt") for idx in batches
    )

    def embedded(batch):
        return embed(batch["input_ids"].to(device), batch["attention_mask"].to(device))

    vectors = torch.empty(len(ids), width)
    with prepacked_linears(module), batch_runner(module, device, len(batches), progress) as run:
        for k, (idx, z) in enumerate(zip(batches, run(embedded, padded))):
            if k == 0 and z.shape[1:] != vectors.shape[1:]:
                vectors = torch.empty(len(ids), *z.shape[1:])
            vectors[idx] = z.float().cpu()
    return vectors


def cpu_workers(module: torch.nn.Module, device: torch.device) -> int:
    """How many inference batches to run at once: on a CPU, one per intra-op thread (at most
    MAX_CPU_WORKERS); 1 (in the caller's thread) on a GPU, under autocast (thread-local, so
    workers would not inherit it), or for sharded (FSDP DTensor) weights, whose forward runs
    collectives that must not interleave."""
    threads = torch.get_num_threads()
    plain = all(map(is_plain, module.parameters()))
    if device.type != "cpu" or torch.is_autocast_enabled("cpu") or not plain:
        return 1
    return max(1, min(threads, MAX_CPU_WORKERS))


@contextmanager
def batch_runner(module: torch.nn.Module, device: torch.device, jobs: int, progress=False):
    """A `run(fn, items) -> iterator of fn(item), in order` for `jobs` inference batches.

    Why workers: on a CPU, one batch per thread, each computed by a single-threaded forward,
    beats every forward split across all threads: every op of a 1,024-token batch is too small
    for two cores to share without waiting on each other. With all-MiniLM-L6-v2 on 2 cores,
    interleaved A/B over 320 SciFact abstracts (ad hoc, /tmp): 22.9 -> 24.5 texts/s, the same as
    two separate single-threaded processes (24.4-24.8), and ~7% less CPU time. Each batch still
    runs whole in one thread with deterministic kernels, so an embedding does not depend on
    which worker computed it. Workers run without gradients (grad mode is thread-local too).
    """
    workers = min(cpu_workers(module, device), jobs)  # one batch: all threads inside it
    threads = torch.get_num_threads()
    pool = None
    if workers > 1:
        torch.set_num_threads(max(1, threads // workers))  # fresh worker threads start with this
        pool = ThreadPoolExecutor(workers, thread_name_prefix="csetrain-encode")

    def run(fn: Callable, items: Iterable) -> Iterator:
        items = list(items)  # padded in this thread; the pool would take them all at once anyway
        results = pool.map(partial(_without_grad, fn), items) if pool else map(fn, items)
        return tqdm(results, desc="encode", total=len(items), disable=not progress, leave=False)

    try:
        yield run
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)  # an error stops the batches not started
            torch.set_num_threads(threads)


def _without_grad(fn: Callable, item):
    with torch.no_grad():  # grad mode is thread-local: a worker does not inherit the caller's
        return fn(item)
