"""Seeds of the position-keyed random draws, so a resumed run redraws exactly what it would have.

Every draw that must be a pure function of (run seed, position) — the epoch shuffle, a step's
augmented positives, an objective's or a miner's sample at a step — seeds its own generator
with `draw_seed(seed, position, stream) = seed * 1_000_003 + stream + position`. The prime
stride keeps runs with different seeds apart for the first million positions; `stream` offsets
one component's second kind of draw from its first at the same position (MCL's group batches
700_001, mined_index's candidate filter 500_009, everything else 0). The numbers are part of
the recorded golden losses and of every checkpoint's future: changing them changes every run.
"""

from __future__ import annotations

import torch

SEED_STRIDE = 1_000_003


def draw_seed(seed: int, position: int, stream: int = 0) -> int:
    """The seed of the draw at `position` (a step, epoch or draw count) in `stream`."""
    return seed * SEED_STRIDE + stream + position


def draw_generator(seed: int, position: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded with `draw_seed(seed, position, stream)`."""
    return torch.Generator().manual_seed(draw_seed(seed, position, stream))
