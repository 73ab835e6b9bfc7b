"""The FIFO behind the momentum queue and CCP's bank: oldest rows fall off, columns stay in step,
the state round-trips, and a zero-length FIFO stays empty."""

import torch

from csetrain.negatives.fifo import FIFO


def _fifo(size=5):
    fifo = FIFO(size, keys=torch.float32, ids=torch.long)
    fifo.allocate(keys=(2,), ids=())
    return fifo


def test_keeps_the_last_rows_oldest_first_in_every_column():
    fifo = _fifo()
    assert fifo.valid("keys").shape == (0, 2)
    keys = torch.arange(16, dtype=torch.float32).view(8, 2)
    fifo.push(keys=keys[:3], ids=torch.arange(3))
    assert torch.equal(fifo.valid("keys"), keys[:3]) and int(fifo.filled) == 3
    fifo.push(keys=keys[3:], ids=torch.arange(3, 8))
    assert torch.equal(fifo.valid("keys"), keys[3:]) and int(fifo.filled) == 5
    assert torch.equal(fifo.valid("ids"), torch.arange(3, 8))
    fifo.push(keys=keys.double()[:1], ids=torch.tensor([0]))  # cast to the column's dtype
    assert fifo.keys.dtype == torch.float32
    assert torch.equal(fifo.valid("keys"), torch.cat([keys[4:], keys[:1]]))


def test_state_round_trips_into_a_fresh_allocated_fifo():
    fifo = _fifo()
    fifo.push(keys=torch.randn(3, 2), ids=torch.tensor([4, 5, 6]))
    state = fifo.state_dict()
    assert set(state) == {"keys", "ids", "filled"}
    fresh = _fifo()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.valid("keys"), fifo.valid("keys"))
    assert torch.equal(fresh.valid("ids"), fifo.valid("ids"))


def test_a_zero_length_fifo_stays_empty():
    fifo = _fifo(size=0)
    fifo.push(keys=torch.ones(3, 2), ids=torch.arange(3))
    assert int(fifo.filled) == 0 and fifo.valid("keys").shape == (0, 2)
