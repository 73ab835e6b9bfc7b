"""`augmentation=token_shuffle`: shuffle the order of the non-special tokens (ConSERT's token
shuffling, Yan et al., arXiv 2105.11741, §3.2), at the token level."""

from __future__ import annotations

import random


class TokenShuffle:
    """A uniformly random permutation of the tokens between the special tokens; special tokens
    keep their positions, so [CLS] stays first and [SEP] last.

    Deviation: ConSERT shuffles the *position ids* fed to the embedding layer (tokens keep their
    slots, their positional embeddings are permuted) over all n tokens of the sentence, [CLS] and
    [SEP] included. For BERT's absolute position embeddings, permuting tokens is the same as
    permuting their position ids, except that we keep the special tokens in place (so CLS pooling
    still reads the position-0 [CLS]).
    """

    def __call__(self, ids: list[int], special_ids: set[int], rng: random.Random) -> list[int]:
        slots = [k for k, token in enumerate(ids) if token not in special_ids]
        tokens = [ids[k] for k in slots]
        rng.shuffle(tokens)
        out = list(ids)
        for k, token in zip(slots, tokens):
            out[k] = token
        return out
