"""Distributed data parallel under torchrun (one process per device): this process's rank, the
differentiable all-gather the objectives' in-batch negatives use, and the gradient mean.
Everything is a no-op on one process, so single-device code calls it unconditionally; joining
the process group (which picks the device's backend) is runtime.init_distributed."""

from __future__ import annotations

import torch


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each rank the summed gradient of its own rows, so every
    rank's loss pushes on the embeddings it borrowed from the others (gloo and NCCL alike).

    Kept instead of `torch.distributed.nn.functional.all_gather` (same gradients on gloo, checked
    with tests/test_ddp.py): torch 2.13 deprecates it (FutureWarning) for the private
    `torch.distributed._functional_collectives`, whose names differ across the torch>=2.4 we
    support; this uses only the stable `all_gather`/`all_reduce`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, D) per rank -> (W*B, D) in rank order, differentiable; identity on one process."""
    return x if rank_and_world()[1] == 1 else _GatherWithGrad.apply(x)


def average_gradients(params) -> None:
    """Mean of the ranks' gradients, in one flat all-reduce (what DDP's reducer does, without
    its overlap with backward: objectives may call any encoder method, not only forward)."""
    import torch.distributed as dist

    world = rank_and_world()[1]
    # FSDP2's sharded gradients (DTensors, csetrain/sharding.py) are already averaged
    grads = [p.grad for p in params if p.grad is not None and not _is_dtensor(p.grad)]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _is_dtensor(tensor) -> bool:
    return type(tensor).__name__ == "DTensor"  # no import: DTensor exists only with FSDP2 in use
