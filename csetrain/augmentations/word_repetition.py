"""`augmentation=word_repetition`: ESimCSE's subword repetition (Wu et al., arXiv 2109.04380, §3.1).

The second view is the anchor's token ids with a few subwords duplicated in place, so the two
views of a positive pair differ in length and a model can no longer use length as a shortcut.
"""

from __future__ import annotations

import random
from typing import Literal

from csetrain.config import ConfigError

LengthRule = Literal["code", "paper"]


def code_rule(dup_rate: float, total_len: int, content_len: int, rng: random.Random) -> int:
    """ESimCSE's code (`dup_type=bpe`): randrange(min(10, int(dup_rate * L))), L counting the
    special tokens; nothing when int(dup_rate * L) is 0. At most 9 duplicates."""
    bound = min(10, int(dup_rate * total_len))
    return rng.randrange(bound) if bound > 0 else 0


def paper_rule(dup_rate: float, total_len: int, content_len: int, rng: random.Random) -> int:
    """The paper's dup_len, uniform on [0, max(2, int(dup_rate * len))], len = the sentence's
    (non-special) tokens; capped at len since a token is duplicated at most once."""
    return min(content_len, rng.randint(0, max(2, int(dup_rate * content_len))))


LENGTH_RULES = {"code": code_rule, "paper": paper_rule}


class WordRepetition:
    """Duplicate `dup_len` randomly chosen subwords in place (`[CLS] a b c [SEP]` ->
    `[CLS] a a b c c [SEP]`); special tokens are never chosen and never moved.

    Applied to the `positive` view only, after the anchor was tokenized and truncated to
    `data.max_length` (so a positive can be up to 9 tokens longer), at subword level
    (ESimCSE's `dup_type=bpe`, the one its run.sh uses). Positions are drawn uniformly without
    replacement from the non-special tokens (the code's `range(1, L-1)`: not CLS, not the final
    SEP; the collator's special ids also include [UNK], which the code could duplicate and we
    never do). `dup_rate`: 0.32 for BERT, 0.30 for RoBERTa-base, 0.28 for RoBERTa-large.

    `length_rule` picks how many tokens are duplicated: `code` (default; the official code, which
    produced the published numbers) or `paper` (the formula in the paper); see the two functions
    above. Deviation from the official code: it draws the augmented view once, in
    `datasets.map` preprocessing, so a sentence keeps the same repetition for the whole run; we
    draw it per step from the collator's per-step seeded rng (a sentence seen twice gets two
    different repetitions; resumed runs still see identical batches).
    """

    def __init__(self, dup_rate: float = 0.32, length_rule: LengthRule = "code") -> None:
        if not 0.0 <= dup_rate <= 1.0:
            raise ConfigError(f"augmentation.dup_rate={dup_rate}: choose a fraction in [0, 1]")
        if length_rule not in LENGTH_RULES:
            raise ConfigError(
                f"augmentation.length_rule='{length_rule}' is unknown: choose one of {sorted(LENGTH_RULES)}"
            )
        self.dup_rate, self.length_rule = dup_rate, length_rule

    def __call__(self, ids: list[int], special_ids: set[int], rng: random.Random) -> list[int]:
        content = [i for i, token in enumerate(ids) if token not in special_ids]
        dup_len = LENGTH_RULES[self.length_rule](self.dup_rate, len(ids), len(content), rng)
        chosen = set(rng.sample(content, min(dup_len, len(content))))
        out = []
        for position, token in enumerate(ids):
            out.append(token)
            if position in chosen:
                out.append(token)
        return out
