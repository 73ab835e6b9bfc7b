"""DDP on CPU: two gloo processes, each with half the batch, give the same loss and gradients
as one process on the whole batch (negatives gathered with gradient, hard negatives aligned),
with one hard negative a row and with k = 3 (fields hard_negative_1..3, the weight on each).

Both sides run in float64: the 2-process sums run in another order than the 1-process ones, and
in float32 that order alone moves gradients by ~1e-6 relative, more or less on each CPU. In
float64 the same reordering moves them by ~n * 1.1e-16 (n: terms in the longest sum, a few
thousand here), so a tolerance of 1e-9 relative to the largest gradient is loose
against rounding on any machine and still ~1e6 times tighter than any real gradient error."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from csetrain.augmentations.dropout import Dropout
from csetrain.data.collate import Collator
from csetrain.data.hard_negatives import negative_fields
from csetrain.distributed import average_gradients
from csetrain.modeling.backbones import tiny
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.negatives.hard_from_data import HardFromData
from csetrain.objectives.simcse_sup import SimCSESup

from .helpers import negative_rows

TEXTS = [
    "a man plays a guitar",
    "two dogs run in a field",
    "the stock market fell today",
    "a child reads a book",
    "rain is expected tomorrow",
    "she sells sea shells",
]


FLOAT64_RTOL = 1e-9  # see the module docstring


NEVER = (" never", " not at all", " or else", " maybe")  # what makes each hard negative


def _setup(negatives: int = 1):
    torch.manual_seed(0)  # the MLP head's init draws from the global RNG
    encoder = SentenceEncoder(tiny(dropout=0.0), pooler="cls", mlp_head="always").double()
    tok = encoder.tokenizer
    fields = negative_fields(negatives)
    rows = negative_rows(tok, TEXTS, fields, NEVER)
    collate = Collator(
        ("anchor", "positive", *fields),
        Dropout(),
        tok.pad_token_id,
        set(),
        augmented_positive=False,
        seed=0,
    )
    objective = SimCSESup(
        miner=HardFromData(), temperature=0.05, hard_negative_weight=math.log(2.0)
    )
    return encoder, objective, collate(rows, step=0)


def _loss_and_grads(rank: int, world: int, negatives: int = 1):
    encoder, objective, batch = _setup(negatives)
    out = objective(encoder, batch.shard(rank, world))
    out.loss.backward()
    params = [p for p in encoder.parameters() if p.requires_grad]
    average_gradients(params)
    return out.loss.item(), {
        n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None
    }


def _worker(rank: int, world: int, port: int, folder: str, negatives: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = _loss_and_grads(rank, world, negatives)
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("negatives", [1, 3])
def test_two_process_loss_and_gradients_equal_single_process(tmp_path, negatives):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), negatives), nprocs=2, join=True)
    shards = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single_loss, single_grads = _loss_and_grads(0, 1, negatives)
    # each rank's loss is the mean over its anchors, so their mean is the full-batch mean
    assert sum(loss for loss, _ in shards) / 2 == pytest.approx(single_loss, rel=FLOAT64_RTOL)
    _, _, batch = _setup(negatives)
    assert len(batch.fields) == 2 + negatives
    halves = batch.shard(0, 2), batch.shard(1, 2)
    assert halves[0].size == halves[1].size == 3 and halves[0].fields == batch.fields
    assert not torch.equal(halves[0].input_ids[:1], halves[1].input_ids[:1])  # different rows
    # One scale for all tensors: some gradients are exactly zero in exact arithmetic (the
    # attention key bias: softmax ignores a per-query constant), so theirs is rounding noise.
    scale = max(grad.abs().max().item() for grad in single_grads.values())
    assert scale > 0 and all(grad.dtype == torch.float64 for grad in single_grads.values())
    for rank_grads in (shards[0][1], shards[1][1]):  # after averaging, every rank holds the same
        assert rank_grads.keys() == single_grads.keys()
        for name, grad in single_grads.items():
            torch.testing.assert_close(
                rank_grads[name], grad, atol=FLOAT64_RTOL * scale, rtol=FLOAT64_RTOL, msg=name
            )
