"""Mirror-BERT span masking: 5 characters of the second view become "[MASK]", only in strings of
at least 30 characters; the first view is untouched; seeded; same tokens as the official code."""

import random

import pytest

from csetrain.augmentations.span_mask import SpanMask
from csetrain.config import ConfigError
from csetrain.data.collate import Collator

LONG = "A man is playing a large flute on the stage."  # 44 characters
SHORT = "A man is playing a flute now."  # 29 characters


def _masked_span(text, out):
    start = out.index("[MASK]")
    return start, out[:start] == text[:start] and out[start + 6 :] == text[start + 5 :]


def test_replaces_exactly_five_characters():
    mask = SpanMask()
    starts = set()
    for seed in range(400):
        out = mask(LONG, random.Random(seed))
        start, intact = _masked_span(LONG, out)
        assert intact and len(out) == len(LONG) - 5 + len("[MASK]")
        starts.add(start)
    assert starts == set(range(len(LONG) - 5))  # uniform over the official range [0, len - 5)


def test_only_strings_of_at_least_30_characters():
    mask = SpanMask()
    assert len(SHORT) == 29 and mask(SHORT, random.Random(0)) == SHORT
    thirty = SHORT + "!"
    assert "[MASK]" in mask(thirty, random.Random(0))


def test_seeded():
    mask = SpanMask()
    assert mask(LONG, random.Random(7)) == mask(LONG, random.Random(7))


def test_only_the_second_view_is_masked(tiny_encoder):
    tok = tiny_encoder.tokenizer
    texts = [LONG, SHORT, "Two dogs are running through a field of tall green grass."]
    collate = Collator(
        ("anchor",),
        SpanMask(),
        tok.pad_token_id,
        set(tok.all_special_ids),
        augmented_positive=True,
        seed=0,
        tokenizer=tok,
        max_length=32,
    )
    anchor_ids = tok(texts, truncation=True, max_length=32)["input_ids"]
    batch = collate({"anchor_ids": anchor_ids, "anchor": texts}, step=3)
    views, masks = batch.split(batch.input_ids), batch.split(batch.attention_mask)
    for row, text in enumerate(texts):
        anchor = views["anchor"][row][masks["anchor"][row].bool()].tolist()
        positive = views["positive"][row][masks["positive"][row].bool()].tolist()
        assert anchor == anchor_ids[row] and tok.mask_token_id not in anchor
        assert (tok.mask_token_id in positive) == (len(text) >= 30)
    assert collate({"anchor_ids": anchor_ids, "anchor": texts}, step=3).input_ids.equal(
        batch.input_ids
    )


def test_same_wordpiece_tokens_as_the_official_spaced_join(tiny_encoder):
    tok = tiny_encoder.tokenizer
    for start in range(0, len(LONG) - 5):
        ours = LONG[:start] + "[MASK]" + LONG[start + 5 :]
        official = " ".join([LONG[:start], "[MASK]", LONG[start + 5 :]])
        assert tok(ours)["input_ids"] == tok(official)["input_ids"]


def test_bad_settings_fail_with_the_key():
    with pytest.raises(ConfigError, match="augmentation.min_chars"):
        SpanMask(span=5, min_chars=5)
    with pytest.raises(ConfigError, match="augmentation.span"):
        SpanMask(span=0)
