"""Position-keyed seeds: distinct per (seed, position) below the stride, and pinned to the values
the recorded golden losses and checkpoints were made with."""

import torch

from csetrain.seeding import SEED_STRIDE, draw_generator, draw_seed


def test_seeds_are_distinct_for_every_seed_and_position_below_the_stride():
    positions = [0, 1, 999, SEED_STRIDE - 1]
    seeds = {draw_seed(seed, p) for seed in range(4) for p in positions}
    assert len(seeds) == 4 * len(positions)


def test_the_scheme_is_the_one_the_golden_runs_were_recorded_with():
    # seed * 1_000_003 + stream + position: changing it moves every golden loss
    assert draw_seed(0, 5) == 5
    assert draw_seed(2, 5, stream=700_001) == 2_000_006 + 700_001 + 5
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(1_000_003 + 7))
    assert torch.equal(torch.randperm(10, generator=draw_generator(1, 7)), expected)
