"""`negative_mining=mined_index`: hard negatives mined online from the training corpus with a
nearest-neighbour index that the current model refreshes every N steps (ANCE's refreshed index,
Xiong et al., arXiv 2007.00808), false negatives dropped by a margin (GISTEmbed, Solatorio,
arXiv 2402.16829, with the model itself as the guide).

The pure parts (`nearest_neighbours`, `pick_in_window`) are at the top of the module.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csetrain.config import ConfigError
from csetrain.data.collate import pad
from csetrain.negatives.base import NegativeMiner, Negatives

try:  # optional: an exact inner-product index; the torch fallback gives the same neighbours
    import faiss
except ImportError:  # pragma: no cover - depends on the environment
    faiss = None


def nearest_neighbours(
    queries: Tensor, keys: Tensor, k: int, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """Exact top-k by inner product (cosine for unit rows): queries (Q, D), keys (N, D) ->
    (scores (Q, k), indices (Q, k)), best first. faiss `IndexFlatIP` when importable, else a
    torch matmul over `chunk_size` queries at a time (bounded memory: chunk_size x N scores)."""
    k = min(k, len(keys))
    if faiss is not None and queries.device.type == "cpu":
        index = faiss.IndexFlatIP(keys.shape[1])
        index.add(keys.detach().float().contiguous().numpy())
        scores, indices = index.search(queries.detach().float().contiguous().numpy(), k)
        return torch.from_numpy(scores), torch.from_numpy(indices).long()
    parts = [(chunk @ keys.T).topk(k, dim=1) for chunk in queries.split(chunk_size)]
    return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


def pick_in_window(
    scores: Tensor,
    indices: Tensor,
    positive_sim: Tensor,
    ranks: tuple[int, int],
    margin: float,
    generator: torch.Generator,
) -> Tensor:
    """One negative per query, uniformly among its neighbours of rank lo..hi-1 (0 = nearest)
    that are not likely false negatives: a candidate with score > positive_sim - margin is
    dropped. scores/indices (Q, K) best first, positive_sim (Q,) -> index (Q,), -1 where no
    candidate survives."""
    lo, hi = ranks
    window_scores, window_idx = scores[:, lo:hi], indices[:, lo:hi]  # (Q, W)
    if window_scores.shape[1] == 0:  # fewer neighbours than the window's start
        return torch.full((len(scores),), -1, dtype=torch.long, device=scores.device)
    allowed = window_scores <= positive_sim[:, None] - margin
    draw = torch.rand(window_scores.shape, generator=generator).to(scores.device)
    draw = draw.masked_fill(~allowed, -1.0)  # a dropped candidate never wins the draw
    choice = window_idx.gather(1, draw.argmax(dim=1, keepdim=True)).squeeze(1)
    return choice.masked_fill(~allowed.any(dim=1), -1)


class MinedIndex(NegativeMiner):
    """Each anchor gets one hard negative: a corpus sentence from ranks `ranks` of its nearest
    neighbours, re-encoded with the live encoder so its embedding carries gradient. The mined
    negatives are extra candidates for every anchor of the batch (not `aligned`: dropped ones
    leave gaps, so SimCSE's hard_negative_weight does not apply).

    Fields: none from the data. The index holds `sample_size` corpus sentences (a fresh seeded
    sample at every refresh; null = the whole corpus) embedded by the current model (eval mode,
    no grad, training embedding = head applied). It is built before the first step (so step 1
    already trains with mined negatives) and rebuilt after every `refresh_every` steps; a resume
    restores the saved index. Neighbours are searched with the step's (live, detached) anchor
    embeddings; rank 0 is normally the anchor itself, hence a window starting at 10. A candidate
    is dropped as a likely false negative when cos(anchor, candidate) > cos(anchor, positive) -
    `margin` (GISTEmbed's rule with the trained model as its own guide; margin 0 is GISTEmbed's
    default). The corpus is the training dataset handed to `bind`: its `anchor_ids`, exactly the
    tokens the training batches use.

    Deviations: the negatives run through the encoder in a second forward pass inside
    `extra_negatives`, so they do not share the batch's padding, are not chunked by GradCache
    and do not pass through an objective's own embedding path (e.g. WhitenedCSE's whitening).
    ANCE refreshes the index asynchronously over the whole corpus; here it is synchronous and,
    by default, a sample.
    """

    def __init__(
        self,
        refresh_every: int = 20,
        sample_size: int | None = 4096,
        ranks: tuple[int, int] | list[int] = (10, 50),
        margin: float = 0.0,
        encode_batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        lo, hi = ranks
        if not 0 <= lo < hi:
            raise ConfigError(
                f"negative_mining.ranks={list(ranks)}: need 0 <= lo < hi, e.g. [10, 50]"
            )
        if refresh_every < 1:
            raise ConfigError(f"negative_mining.refresh_every={refresh_every}: must be >= 1")
        self.refresh_every, self.sample_size = refresh_every, sample_size
        self.ranks, self.margin, self.seed = (lo, hi), margin, seed
        self.encode_batch_size = encode_batch_size
        # Checkpointed state: the index (resized on load) and the step counters.
        self.register_buffer("index_embeddings", torch.zeros(0, 0))  # (N, D) unit rows
        self.register_buffer("index_rows", torch.zeros(0, dtype=torch.long))  # (N,) corpus rows
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("built_at", torch.full((), -1, dtype=torch.long))
        self._encoder = None  # weakref to the live encoder, set by bind
        self._token_ids: list[list[int]] = []
        self.last_mined = 0  # negatives used in the latest step (for inspection)

    # --- corpus and encoding -------------------------------------------------------------
    def bind(self, encoder: nn.Module, dataset=None) -> None:
        if dataset is None or "anchor_ids" not in dataset.column_names:
            raise ConfigError(
                "negative_mining=mined_index needs the tokenized training corpus: bind(encoder, dataset) with an anchor_ids column"
            )
        self._encoder = weakref.ref(encoder)  # the live encoder: not a submodule, not saved
        self._token_ids = dataset["anchor_ids"]

    def _encode(self, encoder: nn.Module, rows: list[int]) -> Tensor:
        ids, mask = pad([self._token_ids[r] for r in rows], encoder.tokenizer.pad_token_id)
        return encoder(ids.to(encoder.device), mask.to(encoder.device))

    @torch.no_grad()
    def refresh(self, encoder: nn.Module) -> None:
        """Re-embed a fresh sample of the corpus with the current model and index it."""
        corpus_size = len(self._token_ids)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.steps))
        rows = torch.randperm(corpus_size, generator=gen)
        if self.sample_size:
            rows = rows[: self.sample_size]
        order = sorted(rows.tolist(), key=lambda r: len(self._token_ids[r]))  # pad least
        was_training = encoder.training
        encoder.eval()
        parts = [
            self._encode(encoder, order[i : i + self.encode_batch_size]).float()
            for i in range(0, len(order), self.encode_batch_size)
        ]
        encoder.train(was_training)
        device = self.steps.device
        self.index_embeddings = F.normalize(torch.cat(parts), dim=-1).to(device)
        self.index_rows = torch.tensor(order, dtype=torch.long, device=device)
        self.built_at.fill_(int(self.steps))

    # --- the miner contract ----------------------------------------------------------------
    def after_optimizer_step(self, encoder: nn.Module, batch) -> None:
        self.steps += 1
        if int(self.steps) % self.refresh_every == 0:  # after steps N, 2N, ...
            self.refresh(encoder)

    def extra_negatives(self, anchors: Tensor, views: dict[str, Tensor]) -> Negatives | None:
        encoder = self._encoder() if self._encoder is not None else None
        if encoder is None:
            raise ConfigError(
                "negative_mining=mined_index was not bound: call bind(encoder, dataset) before training"
            )
        if int(self.built_at) < 0:  # first step of a fresh run (a resume restores the index)
            self.refresh(encoder)
        if len(self.index_rows) <= self.ranks[0]:
            self.last_mined = 0
            return None
        positions = self.mine(anchors, views.get("positive"))
        keep = positions >= 0
        self.last_mined = int(keep.sum())
        if not self.last_mined:
            return None
        rows = self.index_rows[positions[keep]].tolist()
        return Negatives(self._encode(encoder, rows))  # live: train mode, with gradient

    @torch.no_grad()
    def mine(self, anchors: Tensor, positives: Tensor | None) -> Tensor:
        """Index position of each anchor's negative (B,), -1 where none survives the margin."""
        queries = F.normalize(anchors.detach().float(), dim=-1)
        scores, indices = nearest_neighbours(queries, self.index_embeddings, self.ranks[1])
        if positives is None:  # nothing to compare with: keep every candidate
            positive_sim = torch.full((len(queries),), float("inf"), device=queries.device)
        else:
            positive_sim = (queries * F.normalize(positives.detach().float(), dim=-1)).sum(-1)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 500_009 + int(self.steps))
        scores, indices = scores.to(queries.device), indices.to(queries.device)
        return pick_in_window(scores, indices, positive_sim, self.ranks, self.margin, gen)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The index size is only known once built: take the saved shape before loading into it.
        for name in ("index_embeddings", "index_rows"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
