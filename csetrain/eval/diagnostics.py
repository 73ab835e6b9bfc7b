"""Embedding-space diagnostics: what contrastive training does to the geometry, beyond STS scores.

Pure functions on tensors (hand-checkable; alignment and uniformity are those of csetrain.losses,
the regularizer's), plus `Diagnostics`, which measures embeddings of an STS pair set (STS-B dev by
default) the way SimCSE's analysis does (arXiv 2104.08821 §5, after Wang & Isola, arXiv
2005.10242). The dev evaluator runs it on the vectors it already scored when its YAML
sets `diagnostics: true` (metrics `eval/diagnostics/<name>` at every dev evaluation):

- alignment: E ||f(x) - f(x+)||^2 over positive pairs (gold score >= 4.0), lower is better;
- uniformity: log E exp(-2 ||f(x) - f(y)||^2) over all pairs of sentences, lower is better;
- anisotropy: mean cosine of distinct sentence pairs (1 = one direction, ~0 = isotropic);
- length bias: Spearman(|word-count difference|, cosine) over all pairs, in [-1, 1]; compare
  with the same probe on gold scores (`Diagnostics.gold_length_bias`): a model far more negative
  than gold rates pairs of similar length as similar for their length alone.

`effective_negatives` is for training logits (the objective's, not an encoder's): InfoNCE
objectives report it as `train/effective_negatives` on the logging cadence.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import Tensor

from csetrain.config import ConfigError, resolve_data_dir
from csetrain.eval.sts import PairSet, load_task
from csetrain.losses import alignment, uniformity


def anisotropy(x: Tensor) -> Tensor:
    """Mean cosine over all ordered pairs i != j: (N, D) -> ().

    Uses sum_{i != j} x̂_i·x̂_j = ||sum_i x̂_i||^2 - N (unit rows), so it costs O(N D), not O(N^2 D).
    """
    x = F.normalize(x, dim=-1)
    n, total = x.shape[0], x.sum(0)
    return (total.dot(total) - n) / (n * (n - 1))


def word_counts(texts: list[str]) -> Tensor:
    """Whitespace-separated tokens of each text (model-independent, so comparable across
    tokenizers; under the senteval protocol punctuation is split off and counts as a word)."""
    return torch.tensor([len(t.split()) for t in texts], dtype=torch.float64)


def length_bias(first: list[str], second: list[str], scores: Tensor) -> float:
    """Spearman correlation between |word-count difference| of each pair and its score (a
    cosine, or gold), in [-1, 1]; more negative = shorter-vs-longer pairs scored as less similar."""
    gap = (word_counts(first) - word_counts(second)).abs()
    return float(spearmanr(gap.numpy(), scores.double().cpu().numpy()).statistic)


def effective_negatives(logits: Tensor, labels: Tensor | None = None) -> Tensor:
    """Effective number of negatives per anchor, averaged over anchors: (B, C), (B,) -> ().

    For anchor i let p_i be the softmax of its logits over the negative columns only (the
    positive column `labels[i]` masked out); the effective number is exp(H(p_i)), H the entropy
    in nats, i.e. the perplexity of the weights InfoNCE's gradient puts on the negatives
    (dL/ds_ij is proportional to softmax_j). It is K when all K negatives weigh the same and
    tends to 1 when one (hard) negative takes all the weight. Pass the logits the loss sees
    (temperature applied); `labels` default to the diagonal (SimCSE's layout). Columns already at
    -inf (masked out by the objective) count as absent.
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    labels = rows if labels is None else labels
    negatives = logits.float().clone()
    negatives[rows, labels] = float("-inf")
    p = negatives.softmax(dim=-1)  # (B, C), 0 on the positive
    return torch.special.entr(p).sum(-1).exp().mean()  # entr(0) = 0


def pooled(subsets: list[PairSet]) -> PairSet:
    """One PairSet holding every pair of a task's subsets (STS12-16 have several)."""
    return PairSet(
        subsets[0].name if len(subsets) == 1 else "all",
        [s for p in subsets for s in p.first],
        [s for p in subsets for s in p.second],
        np.concatenate([p.gold for p in subsets]),
    )


class Diagnostics:
    """Alignment, uniformity, anisotropy and length bias of embeddings of one STS pair set.

    Positive pairs for alignment are pairs with gold >= `positive_threshold` (SimCSE's 4.0 on
    STS-B's 0-5 scale). Uniformity and anisotropy use every distinct sentence of the set
    (SimCSE's p_data), or a seeded sample of `num_sentences` of them; the result is a
    deterministic function of the vectors. `measure` takes vectors already computed (the STS
    evaluator passes the ones it scored, so a dev evaluation encodes once); calling the object
    encodes the set itself. `on_stsb_dev` builds the set SimCSE's analysis uses.
    """

    def __init__(
        self,
        pairs: PairSet,
        positive_threshold: float = 4.0,
        num_sentences: int | None = None,
        seed: int = 0,
        batch_size: int = 128,
    ) -> None:
        self.pairs = pairs
        self.positive = torch.from_numpy(pairs.gold >= positive_threshold)
        if not self.positive.any():
            raise ConfigError(
                f"diagnostics: no pair of '{pairs.name}' has gold >= {positive_threshold}; lower positive_threshold"
            )
        unique = list(dict.fromkeys(pairs.first + pairs.second))
        if num_sentences is not None and num_sentences < len(unique):
            order = torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed))
            unique = [unique[i] for i in sorted(order[:num_sentences].tolist())]
        self.sample, self.batch_size = unique, batch_size
        gold = torch.from_numpy(pairs.gold)
        self.gold_length_bias = length_bias(pairs.first, pairs.second, gold)

    @classmethod
    def on_stsb_dev(
        cls, data_dir: str | None = None, protocol: str = "senteval", **kwargs
    ) -> Diagnostics:
        """STS-B dev as `protocol` feeds it (`senteval` is what dev selection uses)."""
        (pairs,) = load_task(resolve_data_dir(data_dir), "stsb", "dev", protocol)
        return cls(pairs, **kwargs)

    def sentences(self) -> list[str]:
        """Every distinct sentence of the set (the sample is a subset)."""
        return list(dict.fromkeys(self.pairs.first + self.pairs.second))

    def measure(self, sentences: list[str], vectors: Tensor) -> dict[str, float]:
        """The four numbers from `vectors[i]` = embedding of `sentences[i]` (any superset of
        the set's sentences, normalised or not), in float64."""
        index = {s: i for i, s in enumerate(sentences)}
        vectors = vectors.double()
        first = vectors[[index[s] for s in self.pairs.first]]
        second = vectors[[index[s] for s in self.pairs.second]]
        sample = vectors[[index[s] for s in self.sample]]
        cosine = F.cosine_similarity(first, second, dim=-1)
        return {
            "diagnostics/alignment": alignment(first[self.positive], second[self.positive]).item(),
            "diagnostics/uniformity": uniformity(sample).item(),
            "diagnostics/anisotropy": anisotropy(sample).item(),
            "diagnostics/length_bias": length_bias(self.pairs.first, self.pairs.second, cosine),
        }

    def __call__(self, encoder) -> dict[str, float]:
        sentences = self.sentences()
        return self.measure(sentences, encoder.encode(sentences, self.batch_size, False))
