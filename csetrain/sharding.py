"""Full fine-tuning of models that do not fit one device: FSDP2 (torch's own `fully_shard`)
over every rank, and torch's distributed checkpoint (DCP) so a sharded run resumes.

Each process keeps 1/world of every parameter, gradient and optimizer state (DTensors on a
1-D device mesh). A block's full weights exist only while its forward or backward runs: FSDP2
all-gathers them in a pre-forward hook and reduce-scatters (averages) the gradients after
backward. The gathered-negative loss is unchanged: embeddings are still all-gathered with
gradient (distributed.gather_with_grad), and FSDP's averaged gradient equals the DDP mean that
distributed.average_gradients computes for unsharded parameters (which therefore skips DTensors).

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


def sharded_run(encoder: nn.Module, objective: nn.Module, checkpointer, fresh, device):
    """trainer.fsdp: the encoder sharded in place and the collective checkpointer. An objective
    with parameters of its own (CCP's projector, an MLM head) is refused: the fused optimizer
    and gradient clipping take all-sharded or all-plain parameters, not a mix."""
    if any(p.requires_grad for p in objective.parameters()):
        raise ConfigError(
            f"trainer.fsdp=true shards the encoder only, and {type(objective).__name__} trains parameters of its own: use DDP (trainer.fsdp=false)"
        )
    shard_encoder(encoder)
    return ShardedCheckpointer(checkpointer, fresh, device)


class ShardedCheckpointer:
    """`trainer.fsdp=true`'s Checkpointer: the same folders (`best/` a sentence-transformers
    model, `last/` the resume state), written collectively. `last/dcp` holds every rank's shards
    of the weights and the optimizer (DCP), `last/rng_rank<r>.pt` each rank's generators; rank 0
    writes the scheduler, the objective's state and meta.json. `gathered(encoder)` is the
    unsharded model on rank 0 (all ranks must call it): what dev evaluation and `best/` see.

    Built from a plain Checkpointer (delegating best/ and meta) and `fresh`, a factory of the
    unsharded model that rank 0 loads the gathered weights into (built once, then reused)."""

    collective = True

    def __init__(self, plain, fresh, device="cpu") -> None:
        self.plain, self.fresh, self.device, self._copy = plain, fresh, device, None
        self.root, self.best_dir, self.last_dir = plain.root, plain.best_dir, plain.last_dir

    def __getattr__(self, name):  # save_best, load_best, best_info, meta, discard_state
        if name == "plain":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.plain, name)

    def gathered(self, encoder: nn.Module):
        full = full_state_dict(encoder)  # collective; the weights land on rank 0 only
        if not full:
            return None
        if self._copy is None:
            self._copy = self.fresh().eval()
        self._copy.load_state_dict(full)
        return self._copy.to(self.device)  # inference only: the weights alone must fit

    def save_state(self, step, encoder, objective, optimizer, scheduler, progress, meta) -> None:
        import json

        import torch.distributed as dist
        from safetensors.torch import save_file

        from csetrain.checkpoint import replace_dir
        from csetrain.runtime import rng_states

        rank = dist.get_rank()
        staging = self.root / f".last-step{step}"  # one name every rank derives
        save_sharded(staging / "dcp", encoder, optimizer)  # DCP creates the folders
        torch.save(rng_states(), staging / f"rng_rank{rank}.pt")
        dist.barrier()
        if rank == 0:
            tensors = {k: v.detach().cpu().contiguous() for k, v in objective.state_dict().items()}
            save_file(tensors, str(staging / "objective.safetensors"))
            state = {"step": step, "scheduler": scheduler.state_dict(), "progress": progress}
            torch.save(state, staging / "trainer_state.pt")
            (staging / "meta.json").write_text(json.dumps({"step": step, "sharded": True, **meta}))
            replace_dir(staging, self.last_dir)
        dist.barrier()

    def load_state(self, encoder, objective, optimizer, scheduler) -> tuple[int, dict]:
        import torch.distributed as dist
        from safetensors.torch import load_file

        from csetrain.runtime import set_rng_states

        load_sharded(self.last_dir / "dcp", encoder, optimizer)
        objective.load_state_dict(load_file(str(self.last_dir / "objective.safetensors")))
        state = torch.load(self.last_dir / "trainer_state.pt", weights_only=True)
        scheduler.load_state_dict(state["scheduler"])
        rng = self.last_dir / f"rng_rank{dist.get_rank()}.pt"
        set_rng_states(torch.load(rng, weights_only=True))
        return state["step"], state["progress"]
