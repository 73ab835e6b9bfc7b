"""CPU float32 inference linears through oneDNN, on weights reordered once per encode call.

Why: PyTorch's eager `nn.Linear` on a CPU hands the weight in its plain layout to MKL's GEMM,
which re-packs it inside every call. oneDNN's linear on a weight reordered once into its
blocked layout (what torch.compile's CPU freezing pass uses) runs MiniLM's FFN shape (1,024 x
384 x 1,536) at ~195-208 GFLOP/s on 2 AVX-512 cores vs ~150-175 for `F.linear`; a whole encode
of Banking77 queries / SummEval summaries / SciFact abstracts is 1.29 / 1.16 / 1.06x faster
(`scripts/bench_batching.py`, "plain nn.Linear" row; within-run noise is ~+-0.1). The arithmetic
is float32 throughout (IEEE, no reduced-precision math mode); only the summation order differs,
so embeddings move by ~1e-7.

Only on CPUs with AVX-512, where that was measured. On an AVX2-only CPU (AMD EPYC, 2 cores, with
the batch workers of batching.py) MKL's own kernel was the faster one: interleaved A/B over the
same three sets, 1.0-1.15x for plain nn.Linear (ad hoc, /tmp; `scripts/bench_batching.py`
shows the switched variant on any machine).

Only for inference: the reordered copy is a snapshot of the weight (taken when the block starts,
so a trained weight is always re-read) and has no gradient. It is skipped where it would change
what runs: gradients on, autocast on (it would bypass the cast), non-float32, non-CPU or
sharded (FSDP DTensor) weights, a compiled module, subclasses of nn.Linear (they keep their own
forward), or a torch build without these oneDNN ops. peft's LoRA layers hold plain nn.Linear
parts, which are prepacked.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

# Where this wins (module docstring); benchmarks switch it to compare both kernels side by side.
ENABLED = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
BATCH_ROWS_HINT = 1024  # rows per GEMM the reorder is tuned for: the CPU token cap (batching.py)


def _ops_available() -> bool:
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(ops, name) for name in ("_reorder_linear_weight", "_linear_pointwise")
    )


def applies(module: nn.Module) -> bool:
    """Whether `prepacked_linears(module)` would change anything here and now."""
    return (
        ENABLED
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not any(getattr(m, "_compiled_call_impl", None) for m in module.modules())
        and _ops_available()
    )


def is_plain(tensor) -> bool:
    """A whole local tensor or parameter, not an FSDP shard (DTensor) or another subclass."""
    return type(tensor) in (nn.Parameter, torch.Tensor)


def _packable(layer: nn.Module) -> bool:
    weight = layer.weight if type(layer) is nn.Linear else None
    return is_plain(weight) and weight.dtype == torch.float32 and weight.device.type == "cpu"


def _prepacked_forward(layer: nn.Linear):
    weight = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), BATCH_ROWS_HINT)
    bias = None if layer.bias is None else layer.bias.detach()
    return lambda x: torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@contextmanager
def prepacked_linears(module: nn.Module):
    """Within the block, `module`'s plain float32 CPU nn.Linear layers run oneDNN's linear on a
    reordered copy of their weight (see the module docstring for when nothing changes)."""
    layers = [m for m in module.modules() if _packable(m)] if applies(module) else []
    try:
        for layer in layers:
            layer.forward = _prepacked_forward(layer)  # an instance attribute shadows the method
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
