"""`negative_mining=positive_aware`: NV-Retriever's positive-aware hard-negative mining
(Moreira et al., arXiv 2407.15831, the miner NV-Embed-v2 trains with), TopK-PercPos: a
candidate is kept only when its teacher score is at most `fraction` (95 % in the paper) of the
positive's score, and the k best kept candidates are the negatives.

`topk_percpos` is the pure rule; the offline `csetrain mine` (csetrain/negatives/offline.py)
and the online miner below both call it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from csetrain.config import ConfigError
from csetrain.negatives.mined_index import MinedIndex


def topk_percpos(
    scores: Tensor, indices: Tensor, positive_scores: Tensor, k: int, fraction: float
) -> Tensor:
    """TopK-PercPos. scores/indices (Q, K) best first, positive_scores (Q,) -> (Q, k) candidate
    indices, best first, -1 where fewer than k candidates score <= fraction x positive score
    (NV-Retriever: "ignore hard-negative candidates with a score higher than 95 % of the
    positive's"). A candidate scored +inf (the row's own positive, marked by the caller) never
    passes; a positive score of +inf (no positive) lets every finite candidate pass."""
    allowed = scores <= fraction * positive_scores[:, None]
    ranks = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
    # allowed candidates first, each group in its original (best-first) order
    order = torch.where(allowed, ranks, ranks + scores.shape[1]).argsort(dim=1)[:, :k]
    picked = indices.gather(1, order)
    return picked.masked_fill(~allowed.gather(1, order), -1)


class PositiveAware(MinedIndex):
    """MinedIndex's refreshed corpus index with NV-Retriever's rule in place of GISTEmbed's:
    the `num_negatives` best neighbours (ranks `ranks`) whose score is at most `fraction` of
    sim(anchor, positive) are each anchor's negatives (extra candidates for the whole batch).
    Scores come from the frozen `guide` (NV-Retriever's teacher) when one is given, else from
    the trained model. Rank 0 (normally the anchor itself, score 1 >= any positive's) is
    filtered by the rule itself, hence a window starting at 0. Without positives (single-field
    data) nothing is filtered. `margin` is unused.

    Deviation: the paper mines once with a fixed teacher; that is `csetrain mine` (offline).
    Here the index is refreshed during training like MinedIndex's, so with guide=null the
    teacher is the model being trained."""

    def __init__(
        self,
        fraction: float = 0.95,
        num_negatives: int = 1,
        ranks: tuple[int, int] | list[int] = (0, 100),
        **kwargs,
    ) -> None:
        super().__init__(ranks=ranks, **kwargs)
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(
                f"negative_mining.fraction={fraction}: choose 0 < fraction <= 1 (NV-Retriever: 0.95)"
            )
        lo, hi = self.ranks
        if not 1 <= num_negatives <= hi - lo:
            raise ConfigError(
                f"negative_mining.num_negatives={num_negatives}: choose 1..{hi - lo} (the ranks window)"
            )
        self.fraction, self.num_negatives = fraction, num_negatives

    def pick(self, scores: Tensor, indices: Tensor, positive_sim: Tensor, gen) -> Tensor:
        lo, hi = self.ranks
        window_scores, window_idx = scores[:, lo:hi], indices[:, lo:hi]
        if window_scores.shape[1] == 0:
            return torch.full((len(scores), 1), -1, dtype=torch.long, device=scores.device)
        k = min(self.num_negatives, window_scores.shape[1])
        return topk_percpos(window_scores, window_idx, positive_sim, k, self.fraction)
