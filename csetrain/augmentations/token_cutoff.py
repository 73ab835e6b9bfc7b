"""`augmentation=token_cutoff`: remove a random set of tokens (ConSERT's token cutoff, Yan et al.,
arXiv 2105.11741, §3.2, after Shen et al.'s Cutoff, arXiv 2009.13818), at the token level."""

from __future__ import annotations

import math
import random


class TokenCutoff:
    """Removes exactly `round_stochastic(rate * n)` of the n non-special tokens, positions drawn
    uniformly without replacement; special tokens stay. The count is floor(rate * n) plus one more
    with probability frac(rate * n), so the removed share is `rate` on average even for short
    sentences; at least one content token is always kept.

    Deviation: ConSERT's token cutoff works on *embeddings*: it zeroes the embedding rows of
    int(rate * n) random positions (n counting [CLS]/[SEP] too) and leaves the attention mask and
    positions as they were. A token-level augmentation cannot zero an embedding, so we delete the
    tokens (later tokens shift one position left) and never touch special tokens. Unlike
    `word_deletion` (independent coin per token) the count per sentence is fixed.
    """

    def __init__(self, rate: float = 0.2) -> None:
        from csetrain.config import ConfigError

        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"augmentation.rate={rate}: choose a cutoff rate in [0, 1)")
        self.rate = rate

    def __call__(self, ids: list[int], special_ids: set[int], rng: random.Random) -> list[int]:
        content = [k for k, token in enumerate(ids) if token not in special_ids]
        expected = self.rate * len(content)
        count = math.floor(expected) + (rng.random() < expected - math.floor(expected))
        count = min(count, max(len(content) - 1, 0))
        removed = set(rng.sample(content, count))
        return [token for k, token in enumerate(ids) if k not in removed]
