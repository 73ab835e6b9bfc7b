"""`augmentation=dropout`: the second view is the same tokens; the encoder's dropout is the noise
(SimCSE, arXiv 2104.08821, §3: "dropout noise as minimal data augmentation")."""

from __future__ import annotations

import random


class Dropout:
    """Identity on token ids: both views are identical inputs, so the two forward passes differ
    only through independent dropout masks (which is why both views share one forward pass but
    are separate rows of the batch)."""

    def __call__(self, ids: list[int], special_ids: set[int], rng: random.Random) -> list[int]:
        return list(ids)
