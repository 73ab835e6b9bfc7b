"""ESimCSE word repetition: in-place subword duplication on the second view only, special tokens
kept, the official count of duplicates (and the paper's), seeded determinism."""

import random
from itertools import groupby

import pytest

from csetrain.augmentations.word_repetition import WordRepetition
from csetrain.config import ConfigError
from csetrain.data.collate import Collator

CLS, SEP = 101, 102
SPECIAL = {0, CLS, SEP}


def _ids(content_len):
    return [CLS, *range(1000, 1000 + content_len), SEP]  # no two equal neighbours


def _collapse(ids):
    return [token for token, _ in groupby(ids)]


@pytest.mark.parametrize("rule", ["code", "paper"])
def test_only_duplicates_in_place_and_keeps_special_tokens(rule):
    augment = WordRepetition(dup_rate=0.32, length_rule=rule)
    ids = _ids(30)
    for seed in range(200):
        out = augment(ids, SPECIAL, random.Random(seed))
        assert out[0] == CLS and out[-1] == SEP
        assert out.count(CLS) == 1 and out.count(SEP) == 1
        assert _collapse(out) == ids  # removing the duplicates gives back the original
        assert all(out.count(t) <= 2 for t in ids)  # each token at most once more


def test_code_rule_count_is_randrange_min_10_rate_times_length():
    augment = WordRepetition(dup_rate=0.32)
    ids = _ids(32)  # L = 34 with CLS/SEP: int(0.32 * 34) = 10 -> randrange(10) = 0..9
    added = {len(augment(ids, SPECIAL, random.Random(s))) - len(ids) for s in range(500)}
    assert added == set(range(10))
    short = _ids(10)  # L = 12: int(3.84) = 3 -> 0..2
    added = {len(augment(short, SPECIAL, random.Random(s))) - len(short) for s in range(300)}
    assert added == {0, 1, 2}
    tiny = _ids(1)  # L = 3: int(0.96) = 0 -> never augmented
    assert all(augment(tiny, SPECIAL, random.Random(s)) == tiny for s in range(50))


def test_paper_rule_count_is_uniform_up_to_max_2_rate_times_length():
    augment = WordRepetition(dup_rate=0.32, length_rule="paper")
    ids = _ids(20)  # len = 20 content tokens: max(2, int(6.4)) = 6 -> 0..6
    added = {len(augment(ids, SPECIAL, random.Random(s))) - len(ids) for s in range(500)}
    assert added == set(range(7))
    short = _ids(3)  # max(2, 0) = 2 -> 0..2
    added = {len(augment(short, SPECIAL, random.Random(s))) - len(short) for s in range(300)}
    assert added == {0, 1, 2}


def test_every_content_position_can_be_chosen_and_no_special_one():
    augment = WordRepetition(dup_rate=0.32)
    ids = _ids(12)
    doubled = set()
    for seed in range(400):
        out = augment(ids, SPECIAL, random.Random(seed))
        doubled |= {t for t in ids if out.count(t) == 2}
    assert doubled == set(ids[1:-1])


def test_seeded_and_second_view_only(tiny_encoder):
    augment = WordRepetition(dup_rate=0.32)
    ids = _ids(30)
    assert augment(ids, SPECIAL, random.Random(3)) == augment(ids, SPECIAL, random.Random(3))
    draws = {tuple(augment(ids, SPECIAL, random.Random(s))) for s in range(20)}
    assert len(draws) > 1
    tok = tiny_encoder.tokenizer
    texts = ["the quick brown fox jumps over the lazy dog near the river bank today"] * 4
    anchor_ids = tok(texts, truncation=True, max_length=12)["input_ids"]
    collate = Collator(
        ("anchor",), augment, tok.pad_token_id, set(tok.all_special_ids), True, seed=0
    )
    batch = collate({"anchor_ids": anchor_ids}, step=5)
    views = batch.split(batch.input_ids)
    masks = batch.split(batch.attention_mask)
    for row, ids_row in enumerate(anchor_ids):
        anchor = views["anchor"][row][masks["anchor"][row].bool()].tolist()
        positive = views["positive"][row][masks["positive"][row].bool()].tolist()
        assert anchor == ids_row  # the anchor view is never augmented
        assert positive[0] == tok.cls_token_id and positive[-1] == tok.sep_token_id
        assert len(positive) - len(anchor) <= min(10, int(0.32 * len(anchor))) - 1
    again = collate({"anchor_ids": anchor_ids}, step=5)
    assert again.input_ids.equal(batch.input_ids)


def test_bad_settings_fail_with_the_key():
    with pytest.raises(ConfigError, match="augmentation.length_rule"):
        WordRepetition(length_rule="word")
    with pytest.raises(ConfigError, match="augmentation.dup_rate"):
        WordRepetition(dup_rate=1.5)
