"""augmentation=token_shuffle: special tokens kept at both ends, the same tokens in another order
(every order equally likely), seeded determinism, and training end to end."""

import random
from collections import Counter

import pytest

from csetrain.augmentations.token_shuffle import TokenShuffle

CLS, SEP = 101, 102
IDS = [CLS, 2001, 2002, 2003, SEP]


def test_special_tokens_stay_and_tokens_are_a_permutation():
    ids = [CLS, *range(4000, 4012), SEP]
    for seed in range(20):
        out = TokenShuffle()(ids, {CLS, SEP}, random.Random(seed))
        assert out[0] == CLS and out[-1] == SEP and sorted(out[1:-1]) == ids[1:-1]


def test_every_order_equally_likely():
    counts = Counter(tuple(TokenShuffle()(IDS, {CLS, SEP}, random.Random(s))) for s in range(6000))
    assert len(counts) == 6  # 3! orders of the content tokens
    assert all(c / 6000 == pytest.approx(1 / 6, abs=0.02) for c in counts.values())


def test_seeded_determinism():
    ids = [CLS, *range(4000, 4012), SEP]
    assert TokenShuffle()(ids, {CLS, SEP}, random.Random(3)) == TokenShuffle()(
        ids, {CLS, SEP}, random.Random(3)
    )


def test_three_training_steps(tmp_path):
    from .test_train import _run_tiny

    tracker, c = _run_tiny(tmp_path, ["augmentation=token_shuffle", "trainer.max_steps=3"])
    assert isinstance(c.collator.augmentation, TokenShuffle)
    assert len(tracker.series("train/loss")) == 3
