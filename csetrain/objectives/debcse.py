"""`objective=debcse`: contrastive learning on inverse-propensity-weighted *samples* of positive
and negative pairs (DebCSE, Miao et al., CIKM 2023, arXiv 2309.07396). EXPERIMENTAL: built from
the paper's abstract (the method section and code were not available to us); see `DebCSE`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csetrain.config import ConfigError
from csetrain.data.collate import Batch
from csetrain.losses import cosine_matrix, top1_accuracy
from csetrain.modeling.frozen import FrozenEncoder, field_rows
from csetrain.negatives.base import NegativeMiner
from csetrain.objectives.base import Objective, ObjectiveOutput, checked_temperature
from csetrain.seeding import draw_generator


def surface_similarity(
    ids: Tensor, mask: Tensor, special_ids: Tensor, length_weight: float = 0.5
) -> Tensor:
    """Surface similarity in [0, 1] of every pair of rows, from the content tokens (real and not
    special): length_weight * min(len_i, len_j) / max(len_i, len_j)
    + (1 - length_weight) * Jaccard(token set_i, token set_j). ids, mask (B, L) -> (B, B)."""
    content = mask.bool() & ~torch.isin(ids, special_ids.to(ids.device))  # (B, L)
    lengths = content.sum(1).float()  # (B,)
    length_sim = torch.minimum(lengths[:, None], lengths[None, :]) / torch.maximum(
        lengths[:, None], lengths[None, :]
    ).clamp_min(1.0)  # (B, B)
    vocab, inverse = torch.unique(ids, return_inverse=True)  # only the ids this batch uses
    counts = torch.zeros(len(ids), len(vocab), device=ids.device)
    present = counts.scatter_add_(1, inverse, content.float()) > 0  # (B, V') token sets
    present = present.float()
    shared = present @ present.T  # (B, B) |A & B|
    sizes = present.sum(1)
    union = (sizes[:, None] + sizes[None, :] - shared).clamp_min(1.0)
    return length_weight * length_sim + (1 - length_weight) * shared / union


def ipw_distribution(propensity: Tensor, candidates: Tensor, min_propensity: float) -> Tensor:
    """Per-row sampling distribution over candidates, proportional to 1 / clip(propensity,
    min_propensity, 1). Clipping bounds every weight to [1, 1 / min_propensity], so no pair is
    more than 1 / min_propensity times likelier than another in its row (unclipped inverse
    weights blow up the variance). (B, C), (B, C) bool -> (B, C); each row with a candidate sums
    to 1, a row without one is all zero."""
    weights = propensity.float().clamp(min_propensity, 1.0).reciprocal() * candidates  # (B, C)
    return weights / weights.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def sample_without_replacement(probs: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """Up to `count` distinct columns per row drawn from `probs` (B, C) without replacement
    (Gumbel top-k), never a zero-probability column. -> (B, C) bool."""
    uniform = torch.rand(probs.shape, generator=generator).clamp(1e-12, 1.0 - 1e-7)
    keys = probs.log() - (-uniform.log()).log()  # log p + Gumbel noise; -inf where p = 0
    top = keys.topk(min(count, probs.shape[1]), dim=1).indices
    chosen = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, top, True)
    return chosen & (probs > 0)


class DebCSE(Objective):
    """InfoNCE where each anchor's positive and its negatives are *sampled* from the batch with
    inverse propensity weights computed from surface and semantic similarity.

    What the abstract states: SimCSE-style training data carries a sentence-length bias (the
    dropout twin always has the anchor's length and words, random negatives rarely do) and a
    false-negative bias (in-batch "negatives" that mean the same); DebCSE removes them by inverse
    propensity weighted sampling of positive and negative pairs according to both surface and
    semantic similarity. Everything below that is our construction (the exact propensity model,
    the candidate pools and all defaults are not in the abstract):

    - surface s_ij: `surface_similarity` (length ratio and Jaccard overlap of WordPiece id sets,
      mixed by `length_weight`); semantic m_ij: cosine of a frozen encoder (`semantic_encoder`,
      any model option, default all-MiniLM-L6-v2 with mean pooling; frozen and kept out of
      `parameters()`/`state_dict()` as in csetrain/modeling/frozen.py; it reads the batch's token
      ids, so it must share the trained model's tokenizer).
    - positive candidates of anchor i: its dropout twin and every sentence j with
      m_ij >= positive_threshold. Propensity of a positive = s_ij (the SimCSE rule picks
      surface-identical pairs: s = 1 for the twin), so a surface-dissimilar paraphrase gets a
      higher weight than the twin (the debiasing direction).
    - negative candidates: j != i with m_ij < false_negative_threshold (semantic neighbours are
      dropped as likely false negatives; if that leaves none, every non-positive j). Propensity of
      a negative = 1 - s_ij (random in-batch negatives are mostly surface-dissimilar), so
      surface-similar negatives (same length, shared words, different meaning) are favoured.
    - both propensities are clipped to [min_propensity, 1] and turned into per-anchor sampling
      distributions (`ipw_distribution`); one positive and round(negative_fraction * (B - 1))
      negatives are drawn without replacement per anchor from a generator seeded by
      (seed, call count) — the count is a buffer, so it checkpoints and a run is reproducible.
    - loss: cross-entropy of cos(anchor_i, positive-view_j) / temperature over the sampled
      positive and negatives only (the other columns are masked out), plus the miner's extras.

    Batch fields: `anchor` (+ `positive`, its dropout twin: `augmentation=dropout`). Measured on
    the data pack's wiki sentences, a random batch of 64 gives an anchor a MiniLM neighbour with
    cosine >= 0.7 for only ~0.6% of anchors, so with random batches the twin is almost always the
    positive and the active parts are the false-negative filter and the IPW negative sampling.
    """

    data_fields = ("anchor",)
    augmented_positive = True

    def __init__(
        self,
        miner: NegativeMiner | None = None,
        semantic_encoder: nn.Module | None = None,
        temperature: float = 0.05,
        positive_threshold: float = 0.7,
        false_negative_threshold: float = 0.5,
        negative_fraction: float = 0.5,
        min_propensity: float = 0.1,
        length_weight: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__(miner)
        if semantic_encoder is None:
            raise ConfigError("objective.semantic_encoder: set a model option (e.g. all-MiniLM)")
        if not 0.0 < min_propensity <= 1.0:
            raise ConfigError(f"objective.min_propensity={min_propensity}: choose in (0, 1]")
        if not 0.0 < negative_fraction <= 1.0:
            raise ConfigError(f"objective.negative_fraction={negative_fraction}: choose in (0, 1]")
        if false_negative_threshold > positive_threshold:
            raise ConfigError(
                f"objective.false_negative_threshold={false_negative_threshold} must be <= "
                f"objective.positive_threshold={positive_threshold}"
            )
        if not 0.0 <= length_weight <= 1.0:
            raise ConfigError(f"objective.length_weight={length_weight}: choose in [0, 1]")
        self.semantic = FrozenEncoder(semantic_encoder, "objective.semantic_encoder")
        self.temperature = checked_temperature(temperature)
        self.positive_threshold = positive_threshold
        self.false_negative_threshold = false_negative_threshold
        self.negative_fraction, self.min_propensity = negative_fraction, min_propensity
        self.length_weight, self.seed = length_weight, seed
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))
        self.special_ids = torch.tensor(sorted(self.semantic.tokenizer.all_special_ids))

    def embed(self, encoder: nn.Module, batch: Batch) -> dict[str, Tensor]:
        self.semantic.check_tokenizer(encoder.tokenizer)
        return super().embed(encoder, batch)

    def distributions(self, batch: Batch) -> dict[str, Tensor]:
        """Per-anchor sampling distributions of positives and negatives (B, B) on the CPU, with
        the similarities they come from."""
        ids, mask = field_rows(batch, "anchor")
        surface = surface_similarity(ids, mask, self.special_ids, self.length_weight).cpu()
        z = self.semantic.embed(ids, mask)
        semantic = cosine_matrix(z, z).cpu()  # (B, B)
        own = torch.eye(len(ids), dtype=torch.bool)
        positive = own | (semantic >= self.positive_threshold)
        negative = ~positive & (semantic < self.false_negative_threshold)
        empty = ~negative.any(1, keepdim=True)  # every other sentence is semantically close
        negative = torch.where(empty, ~positive, negative)
        return {
            "positive": ipw_distribution(surface, positive, self.min_propensity),
            "negative": ipw_distribution(1.0 - surface, negative, self.min_propensity),
            "surface": surface,
            "semantic": semantic,
        }

    def sample(self, batch: Batch) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(positive column per anchor (B,), sampled negatives (B, B) bool, distributions)."""
        dist = self.distributions(batch)
        generator = draw_generator(self.seed, int(self.draws))
        self.draws += 1
        positives = torch.multinomial(dist["positive"], 1, generator=generator).squeeze(1)
        count = max(1, round(self.negative_fraction * (batch.size - 1)))
        negatives = sample_without_replacement(dist["negative"], count, generator)
        return positives, negatives, dist

    def loss(self, views: dict[str, Tensor], batch: Batch) -> ObjectiveOutput:
        anchors, twins = views["anchor"], views["positive"]  # (B, D) each
        positives, negatives, dist = self.sample(batch)
        positives, negatives = positives.to(anchors.device), negatives.to(anchors.device)
        allowed = negatives | F.one_hot(positives, len(anchors)).bool()  # (B, B)
        logits = cosine_matrix(anchors, twins).float() / self.temperature  # (B, B)
        logits = logits.masked_fill(~allowed, float("-inf"))
        extra = self.miner.extra_negatives(anchors, views)
        if extra is not None:  # the miner's extras are candidates for every anchor
            more = cosine_matrix(anchors, extra.embeddings).float() / self.temperature
            logits = torch.cat([logits, more], dim=1)  # (B, B + M)
        loss = F.cross_entropy(logits, positives)
        off_diagonal = ~torch.eye(len(anchors), dtype=torch.bool)
        close = dist["semantic"][off_diagonal] >= self.false_negative_threshold
        return ObjectiveOutput(
            loss,
            {
                "acc": top1_accuracy(logits.detach(), positives),
                "swapped_positives": (positives.cpu() != torch.arange(len(anchors))).float().mean(),
                "negatives": negatives.sum(1).float().mean(),
                "false_negatives": close.float().mean(),  # share of pairs filtered out
            },
        )
