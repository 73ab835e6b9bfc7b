"""augmentation=word_deletion: special tokens kept at both ends, deletion rate p on average,
seeded determinism, and training end to end."""

import random

import pytest

from csetrain.augmentations.word_deletion import WordDeletion
from csetrain.config import ConfigError

CLS, SEP = 101, 102
IDS = [CLS, *range(2000, 2020), SEP]  # 20 content tokens


def test_special_tokens_stay_at_both_ends_and_order_is_kept():
    aug = WordDeletion(p=0.5)
    for seed in range(50):
        out = aug(IDS, {CLS, SEP}, random.Random(seed))
        assert out[0] == CLS and out[-1] == SEP and len(out) >= 3  # never empty
        assert out[1:-1] == sorted(out[1:-1])  # a subsequence: deletion only


def test_deletion_rate_on_average():
    aug = WordDeletion(p=0.3)
    kept = [len(aug(IDS, {CLS, SEP}, random.Random(seed))) - 2 for seed in range(2000)]
    assert 1 - sum(kept) / (20 * len(kept)) == pytest.approx(0.3, abs=0.01)
    assert WordDeletion(p=0.0)(IDS, {CLS, SEP}, random.Random(0)) == IDS


def test_seeded_determinism():
    aug = WordDeletion(p=0.3)
    assert aug(IDS, {CLS, SEP}, random.Random(7)) == aug(IDS, {CLS, SEP}, random.Random(7))
    outs = {tuple(aug(IDS, {CLS, SEP}, random.Random(seed))) for seed in range(10)}
    assert len(outs) > 1


def test_bad_probability_names_the_key():
    with pytest.raises(ConfigError, match="augmentation.p"):
        WordDeletion(p=1.0)


def test_three_training_steps(tmp_path):
    from .test_train import _run_tiny

    tracker, c = _run_tiny(tmp_path, ["augmentation=word_deletion", "trainer.max_steps=3"])
    assert isinstance(c.collator.augmentation, WordDeletion)
    assert len(tracker.series("train/loss")) == 3
