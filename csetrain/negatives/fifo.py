"""A first-in-first-out buffer of the last `size` rows appended: the memory of a momentum queue
(negatives/momentum_queue.py) or a memory bank (objectives/ccp.py)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FIFO(nn.Module):
    """The last `size` rows appended, oldest first and newest last, in named columns of equal
    length (e.g. `keys` and their sentence `ids`). The columns and the count of valid rows
    (`filled`) are buffers, so the FIFO checkpoints and resumes with the module that holds it.

    A column's row shape is only known once the encoder is (e.g. its hidden size): columns start
    with no row width and `allocate` gives them one (emptying the FIFO), before a state load.
    """

    def __init__(self, size: int, **columns: torch.dtype) -> None:
        super().__init__()
        self.size = size
        for name, dtype in columns.items():
            self.register_buffer(name, torch.zeros(size, 0, dtype=dtype))  # (K, 0) until allocated
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # valid rows, <= K

    def allocate(self, device: torch.device | None = None, **shapes: tuple[int, ...]) -> None:
        """Empty the FIFO and give each named column the row shape `shapes[name]`: (K, *shape)."""
        for name, shape in shapes.items():
            dtype = getattr(self, name).dtype
            setattr(self, name, torch.zeros(self.size, *shape, dtype=dtype, device=device))
        self.filled.zero_()

    @torch.no_grad()
    def push(self, **rows: Tensor) -> None:
        """Append N rows to every column (rows[name]: (N, *shape)); the oldest fall off the front."""
        if self.size == 0:
            return
        for name, new in rows.items():
            column = getattr(self, name)
            column.copy_(torch.cat([column, new.to(column.dtype)])[-self.size :])
        added = len(next(iter(rows.values())))
        self.filled.fill_(min(self.size, int(self.filled) + added))

    def valid(self, name: str) -> Tensor:
        """The filled rows of column `name`, oldest first: (M, *shape), M = `filled`."""
        return getattr(self, name)[self.size - int(self.filled) :]
