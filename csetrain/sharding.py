"""Full fine-tuning of models that do not fit one device: FSDP2 (torch's own `fully_shard`)
over every rank, and torch's distributed checkpoint (DCP) so a sharded run resumes.

Each process keeps 1/world of every parameter, gradient and optimizer state (DTensors on a
1-D device mesh). A block's full weights exist only while its forward or backward runs: FSDP2
all-gathers them in a pre-forward hook and reduce-scatters (averages) the gradients after
backward. The gathered-negative loss is unchanged: embeddings are still all-gathered with
gradient (runtime.gather_with_grad), and FSDP's averaged gradient equals the DDP mean that
runtime.average_gradients computes for unsharded parameters (which therefore skips DTensors).

Which modules are sharded: each transformer block (the classes the Hugging Face model lists in
`_no_split_modules`: BertLayer and BertEmbeddings, Qwen2DecoderLayer, ...), then the rest of the
transformer, then each other child of the SentenceEncoder that owns parameters (the MLP head,
latent attention), so every parameter lives in a module whose forward is called. Limitation:
an objective that reads a parameter outside a forward (MLM's tied decoder through
`input_embeddings`) sees a shard, not the weight; those objectives are for DDP.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from csetrain.config import ConfigError


def is_sharded(tensor) -> bool:
    """A DTensor: an FSDP2 parameter or gradient (already reduced across ranks)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def device_mesh(device: torch.device):
    """One dimension over every process of the default group (gloo on CPU, NCCL on GPU)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        raise ConfigError(
            "trainer.fsdp=true needs several processes: launch with torchrun --nproc-per-node=N"
        )
    return init_device_mesh(device.type, (dist.get_world_size(),))


def shard_encoder(encoder: nn.Module, mesh=None, reshard_after_forward: bool = True) -> nn.Module:
    """Apply fully_shard bottom-up (blocks, transformer, other children), in place; build the
    optimizer afterwards, on the sharded parameters."""
    from torch.distributed.fsdp import fully_shard

    mesh = mesh if mesh is not None else device_mesh(encoder.device)
    transformer = encoder.transformer
    blocks = set(getattr(transformer, "_no_split_modules", None) or ())
    if not blocks:
        raise ConfigError(
            f"trainer.fsdp: {type(transformer).__name__} lists no _no_split_modules (its blocks): use DDP (trainer.fsdp=false)"
        )
    options = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    for module in reversed(list(transformer.modules())):  # innermost first
        if type(module).__name__ in blocks:
            fully_shard(module, **options)
    fully_shard(transformer, **options)
    for name, child in encoder.named_children():
        if name != "transformer" and next(child.parameters(), None) is not None:
            fully_shard(child, **options)
    return encoder


def save_sharded(folder: str | Path, model: nn.Module, optimizer) -> None:
    """Every rank writes its own shards of the weights and the optimizer state (DCP); all
    ranks must call it. A run with another world size can load the folder (DCP reshards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(folder))


def load_sharded(folder: str | Path, model: nn.Module, optimizer) -> None:
    """Read a save_sharded folder into an already sharded model and its optimizer (all ranks)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    if not Path(folder).is_dir():
        raise ConfigError(f"sharded checkpoint {folder} does not exist: set trainer.resume=never")
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights on rank 0's CPU (empty on the others), e.g. to export the model; all
    ranks must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)
