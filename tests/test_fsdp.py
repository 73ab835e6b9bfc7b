"""FSDP2 on CPU: two gloo processes with `fully_shard`ed encoders (each holding half of every
parameter) give the same loss and gradients as one unsharded process on the whole batch, with
the gathered-negative loss unchanged (tiny BERT with supervised SimCSE and hard negatives, and
a bidirectional tiny Llama); a DCP checkpoint resumes a sharded run exactly.

Float64 on both sides, for the reason (and tolerance) of tests/test_ddp.py's docstring."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from csetrain.checkpoint import Checkpointer
from csetrain.config import ConfigError
from csetrain.distributed import average_gradients, gather_with_grad
from csetrain.modeling.decoders import tiny_decoder
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.modeling.export import load_sentence_encoder
from csetrain.sharding import (
    ShardedCheckpointer,
    full_state_dict,
    is_sharded,
    shard_encoder,
    sharded_run,
)

from .test_ddp import FLOAT64_RTOL, _free_port, _loss_and_grads, _setup

LR = 1e-3


def _sharded_step(encoder, objective, batch, optimizer, rank, world):
    out = objective(encoder, batch.shard(rank, world))
    out.loss.backward()
    average_gradients(list(encoder.parameters()))  # must leave FSDP's reduced DTensors alone
    grads = {n: p.grad.full_tensor() for n, p in encoder.named_parameters()}
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.loss.item(), grads


def _decoder_loss_and_grads(rank: int, world: int):
    """A bidirectional tiny Llama (GQA blocks, last-token pooling): InfoNCE of 8 texts against
    the gathered batch, each rank's loss over its own rows; sharded when world > 1."""
    encoder = SentenceEncoder(
        tiny_decoder(dropout=0.0), pooler="last_token", attention="bidirectional"
    ).double()
    if world > 1:
        shard_encoder(encoder)
    ids = torch.randint(5, 1000, (8, 9), generator=torch.Generator().manual_seed(1))
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    z = F.normalize(gather_with_grad(encoder(ids[rows], torch.ones_like(ids[rows]))), dim=-1)
    loss = F.cross_entropy((z[rows] @ z.T) / 0.05, torch.arange(8)[rows])
    loss.backward()
    full = (lambda g: g.full_tensor()) if world > 1 else (lambda g: g)
    return loss.item(), {n: full(p.grad) for n, p in encoder.named_parameters()}


def _fresh(rank, world):
    encoder, objective, batch = _setup()
    shard_encoder(encoder)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=LR, fused=True)
    return encoder, objective, batch, optimizer


def _full(encoder):
    return {n: p.full_tensor().clone() for n, p in encoder.named_parameters()}


def _schedule(optimizer):
    # a decaying lr, so a resume that lost the scheduler's position would take another step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))


def _train_step(encoder, objective, batch, optimizer, scheduler, rank, world):
    out = _sharded_step(encoder, objective, batch, optimizer, rank, world)
    scheduler.step()
    return out


def _checkpointer(folder: str) -> ShardedCheckpointer:
    return ShardedCheckpointer(Checkpointer(folder), lambda: _setup()[0])


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        encoder, objective, batch, optimizer = _fresh(rank, world)
        scheduler = _schedule(optimizer)
        local = {n: p.to_local().numel() for n, p in encoder.named_parameters()}
        sharded = all(is_sharded(p) for p in encoder.parameters())
        loss, grads = _train_step(encoder, objective, batch, optimizer, scheduler, rank, world)
        progress = {"best_metric": 0.5, "best_step": 1, "history": []}
        _checkpointer(folder).save_state(1, encoder, objective, optimizer, scheduler, progress, {})
        _train_step(encoder, objective, batch, optimizer, scheduler, rank, world)
        after_two = _full(encoder)
        copy = _checkpointer(folder).gathered(encoder)  # rank 0: an unsharded model
        copy = {n: p.clone() for n, p in copy.named_parameters()} if copy is not None else None
        # a new process's view: fresh sharded model, optimizer and schedule, state read back
        encoder, objective, batch, optimizer = _fresh(rank, world)
        scheduler = _schedule(optimizer)
        ckpt = _checkpointer(folder)
        step, saved = ckpt.load_state(encoder, objective, optimizer, scheduler)
        _train_step(encoder, objective, batch, optimizer, scheduler, rank, world)
        resumed = _full(encoder)
        exported = full_state_dict(encoder)
        decoder = _decoder_loss_and_grads(rank, world)
        result = (loss, grads, after_two, resumed, local, sharded, len(exported), decoder)
        result += (copy, step, saved, ckpt.meta())
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_worker, args=(2, _free_port(), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_two_sharded_processes_give_the_loss_and_gradients_of_one(shards):
    single_loss, single_grads = _loss_and_grads(0, 1)
    assert (shards[0][0] + shards[1][0]) / 2 == pytest.approx(single_loss, rel=FLOAT64_RTOL)
    scale = max(grad.abs().max().item() for grad in single_grads.values())
    for _, grads, *_ in shards:
        assert grads.keys() == single_grads.keys()
        for name, grad in single_grads.items():
            torch.testing.assert_close(
                grads[name], grad, atol=FLOAT64_RTOL * scale, rtol=FLOAT64_RTOL, msg=name
            )


def test_a_sharded_bidirectional_decoder_matches_one_process(shards):
    single_loss, single_grads = _decoder_loss_and_grads(0, 1)
    assert (shards[0][7][0] + shards[1][7][0]) / 2 == pytest.approx(single_loss, rel=FLOAT64_RTOL)
    scale = max(grad.abs().max().item() for grad in single_grads.values())
    assert scale > 1e-5  # far above float64 rounding (~1e-16 relative): a real comparison
    for name, grad in single_grads.items():
        for shard in shards:
            torch.testing.assert_close(
                shard[7][1][name], grad, atol=FLOAT64_RTOL * scale, rtol=FLOAT64_RTOL, msg=name
            )


def test_every_parameter_is_sharded_in_halves(shards):
    encoder, _, _ = _setup()
    full = {n: p.numel() for n, p in encoder.named_parameters()}
    local = [s[4] for s in shards]
    assert all(s[5] for s in shards)  # every parameter a DTensor
    for name, numel in full.items():  # dim-0 halves (the larger one first when odd)
        assert local[0][name] + local[1][name] == numel and local[0][name] >= local[1][name]
    assert sum(local[0].values()) < 0.51 * sum(full.values())
    assert shards[0][6] == len(full) and shards[1][6] == 0  # full weights on rank 0 only


def test_dcp_checkpoint_resumes_the_sharded_run_exactly(shards):
    # equal bit for bit only if both the weights and Adam's moments came back: a fresh Adam's
    # first step (about lr x sign(grad)) differs from the second step of a running one
    for _, _, after_two, resumed, *_ in shards:
        assert after_two.keys() == resumed.keys()
        for name in after_two:
            assert torch.equal(after_two[name], resumed[name]), name
    # both ranks gather the same full weights; rank 0's unsharded copy holds them too
    copy = shards[0][8]
    assert shards[1][8] is None and copy.keys() == shards[0][2].keys()
    for name in shards[0][2]:
        assert torch.equal(shards[0][2][name], shards[1][2][name]), name
        assert torch.equal(copy[name], shards[0][2][name]), name
    for shard in shards:  # the collective checkpointer's own records
        assert shard[9] == 1 and shard[10]["best_metric"] == 0.5
        assert shard[11]["sharded"] is True and shard[11]["step"] == 1


def test_an_objective_with_its_own_parameters_is_refused():
    encoder, objective, _ = _setup()
    objective.projector = torch.nn.Linear(4, 4)  # like CCP's projector: not part of the encoder
    with pytest.raises(ConfigError, match="trainer.fsdp=true shards the encoder only"):
        sharded_run(encoder, objective, None, None, "cpu")


def test_shard_needs_several_processes():
    encoder, _, _ = _setup()
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node"):
        shard_encoder(encoder)


@pytest.mark.slow
def test_csetrain_train_under_torchrun_with_fsdp(tmp_path):
    """The real command: 2 gloo processes, dev evaluation and best/ on gathered weights."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
           f"--master-port={_free_port()}", "-m", "csetrain", "train", "experiment=demo",
           "model=tiny", "trainer.fsdp=true", "trainer.max_steps=4", "trainer.eval_every=2",
           "trainer.save_every=2", "trainer.batch_size=8", "trainer.device=cpu",
           "trainer.progress=false", "data.max_sentences=64", "tracking=none",
           f"paths.output_dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: best dev" in proc.stdout + proc.stderr  # torchrun may route either
    (best,) = tmp_path.glob("runs/*/*/checkpoints/best")
    model = load_sentence_encoder(best)  # a plain, unsharded sentence-transformers folder
    assert not any(is_sharded(p) for p in model.parameters())
