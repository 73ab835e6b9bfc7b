"""`augmentation=word_deletion`: delete each non-special token with probability p (the word
deletion of CLEAR, arXiv 2012.15466, and of the augmentation ablations in SimCSE's Table 2 and
ConSERT's §5)."""

from __future__ import annotations

import random


class WordDeletion:
    """Each token that is not a special token is dropped independently with probability `p`;
    special tokens ([CLS], [SEP], ...) stay where they are.

    Deviation: the papers delete whole *words*; this works on the token ids the collator holds,
    i.e. WordPiece tokens, so a multi-piece word can lose one piece (most wiki words are a single
    piece). If every content token draws deletion, one of them (chosen at random) is kept so the
    view is never an empty sentence.
    """

    def __init__(self, p: float = 0.1) -> None:
        from csetrain.config import ConfigError

        if not 0.0 <= p < 1.0:
            raise ConfigError(f"augmentation.p={p}: choose a deletion probability in [0, 1)")
        self.p = p

    def __call__(self, ids: list[int], special_ids: set[int], rng: random.Random) -> list[int]:
        content = [k for k, token in enumerate(ids) if token not in special_ids]
        deleted = {k for k in content if rng.random() < self.p}
        if content and len(deleted) == len(content):
            deleted.discard(rng.choice(content))
        return [token for k, token in enumerate(ids) if k not in deleted]
