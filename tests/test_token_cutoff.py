"""augmentation=token_cutoff: special tokens kept at both ends, exactly round(rate * n) tokens
removed (rate on average), seeded determinism, and training end to end."""

import random

import pytest

from csetrain.augmentations.token_cutoff import TokenCutoff
from csetrain.config import ConfigError

CLS, SEP = 101, 102


def _ids(n):
    return [CLS, *range(3000, 3000 + n), SEP]


def test_special_tokens_stay_at_both_ends_and_order_is_kept():
    aug = TokenCutoff(rate=0.5)
    for seed in range(50):
        out = aug(_ids(9), {CLS, SEP}, random.Random(seed))
        assert out[0] == CLS and out[-1] == SEP
        assert out[1:-1] == sorted(out[1:-1]) and len(out) >= 3


def test_exact_count_and_rate_on_average():
    aug = TokenCutoff(rate=0.2)
    removed = [20 - (len(aug(_ids(20), {CLS, SEP}, random.Random(s))) - 2) for s in range(20)]
    assert set(removed) == {4}  # 0.2 * 20 is whole: always exactly 4
    short = [7 - (len(aug(_ids(7), {CLS, SEP}, random.Random(s))) - 2) for s in range(4000)]
    assert set(short) == {1, 2}  # 1.4 tokens: 1 or 2, stochastically rounded
    assert sum(short) / (7 * len(short)) == pytest.approx(0.2, abs=0.01)
    assert TokenCutoff(rate=0.9)(_ids(1), {CLS, SEP}, random.Random(0)) == _ids(1)  # keeps one


def test_seeded_determinism():
    aug = TokenCutoff(rate=0.3)
    assert aug(_ids(15), {CLS, SEP}, random.Random(5)) == aug(
        _ids(15), {CLS, SEP}, random.Random(5)
    )
    assert len({tuple(aug(_ids(15), {CLS, SEP}, random.Random(s))) for s in range(10)}) > 1


def test_bad_rate_names_the_key():
    with pytest.raises(ConfigError, match="augmentation.rate"):
        TokenCutoff(rate=-0.1)


def test_three_training_steps(tmp_path):
    from .test_train import _run_tiny

    tracker, c = _run_tiny(tmp_path, ["augmentation=token_cutoff", "trainer.max_steps=3"])
    assert isinstance(c.collator.augmentation, TokenCutoff)
    assert len(tracker.series("train/loss")) == 3
