"""`negative_mining=mined_index`: hard negatives mined online from the training corpus with a
nearest-neighbour index that the current model refreshes every N steps (ANCE's refreshed index,
Xiong et al., arXiv 2007.00808), false negatives dropped by a margin (GISTEmbed, Solatorio,
arXiv 2402.16829): with a frozen guide model, or with the trained model itself as the guide.

The pure parts (`nearest_neighbours`, `pick_in_window`) are at the top of the module.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csetrain.config import ConfigError
from csetrain.data.collate import pad
from csetrain.modeling.frozen import FrozenEncoder, field_rows
from csetrain.negatives.base import NegativeMiner, Negatives, take_saved_shapes
from csetrain.seeding import draw_generator

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


def load_guide(guide: str | nn.Module) -> FrozenEncoder:
    """A frozen guide: a built encoder (the application builds a model option such as
    minilm-l6 into one) or a folder saved by csetrain or sentence-transformers."""
    from csetrain.modeling.export import load_sentence_encoder

    if isinstance(guide, nn.Module):
        return FrozenEncoder(guide, "negative_mining.guide")
    folder = Path(guide).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"negative_mining.guide='{guide}' is neither a model option nor a saved model folder"
        )
    return FrozenEncoder(load_sentence_encoder(folder), "negative_mining.guide")


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
    is dropped as a likely false negative when sim(anchor, candidate) > sim(anchor, positive) -
    `margin` (GISTEmbed's rule; margin 0 is GISTEmbed's default), where sim is the cosine of a
    frozen `guide` model (GISTEmbed's guide) or, without one, of the trained model itself (its
    index scores, and its training embedding of the positive). The corpus is the training dataset
    handed to `bind`: its `anchor_ids`, exactly the tokens the training batches use.

    Guide (`guide=minilm-l6` or a saved folder): neighbours still come from the trained model's
    index; the guide only decides which of them are false negatives. It reads the sentences as
    the training tokens spell them (decoded with the trained model's tokenizer, then tokenized
    with its own, so any guide vocabulary works; an uncased trained model hands it lower-cased
    text): the batch's anchors and positives once per step (the objective hands the miner the
    batch through `observe`) and each corpus row once per run (it is frozen, so its corpus
    embeddings are cached on CPU, filled at each refresh for the new sample). It is held outside
    the module tree (csetrain/modeling/frozen.py): never optimised, never checkpointed; after a
    resume its cache refills as rows are needed. With dropout twins (unsupervised data) the guide
    sees anchor = positive, so sim(anchor, positive) = 1 bounds every candidate and margin 0
    drops nothing (copies of the anchor tie with the positive, up to float noise): there a
    positive margin (e.g. 0.1: drop candidates the guide scores above 0.9) is what filters.

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
        guide: str | nn.Module | None = None,
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
        self._tokenizer = None  # the trained model's: decodes token ids for the guide
        self.last_mined = 0  # negatives used in the latest step (for inspection)
        # The guide and its caches are plain attributes: not parameters, not buffers, not saved.
        self.guide = load_guide(guide) if guide is not None else None
        self._guide_slot = torch.zeros(0, dtype=torch.long)  # (corpus,) row -> store row, -1 = none
        self._guide_store = torch.zeros(0, 0)  # (n, D_guide) unit rows, CPU
        self._guide_batch: tuple | None = None  # (step, anchors, positives) seen by observe

    # --- corpus and encoding -------------------------------------------------------------
    def bind(self, encoder: nn.Module, dataset=None) -> None:
        if dataset is None or "anchor_ids" not in dataset.column_names:
            raise ConfigError(
                "negative_mining=mined_index needs the tokenized training corpus: bind(encoder, dataset) with an anchor_ids column"
            )
        self._encoder = weakref.ref(encoder)  # the live encoder: not a submodule, not saved
        self._token_ids = dataset["anchor_ids"]
        self._tokenizer = encoder.tokenizer
        if self.guide is not None:
            self.guide.encoder.to(encoder.device)
            self._guide_slot = torch.full((len(self._token_ids),), -1, dtype=torch.long)

    def _encode(self, encoder: nn.Module, rows: list[int]) -> Tensor:
        ids, mask = pad([self._token_ids[r] for r in rows], encoder.tokenizer.pad_token_id)
        return encoder(ids.to(encoder.device), mask.to(encoder.device))

    @torch.no_grad()
    def refresh(self, encoder: nn.Module) -> None:
        """Re-embed a fresh sample of the corpus with the current model and index it."""
        corpus_size = len(self._token_ids)
        gen = draw_generator(self.seed, int(self.steps))
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
        if self.guide is not None:  # embed the new sample's rows now, not one step at a time
            self.guide_rows(self.index_rows.cpu())

    # --- the guide -----------------------------------------------------------------------------
    def _guide_encode(self, token_rows: list[list[int]]) -> Tensor:
        """Unit guide embeddings (n, D_guide) on CPU of sentences given as training token ids."""
        texts = self._tokenizer.batch_decode(token_rows, skip_special_tokens=True)
        vectors = self.guide.encoder.encode(texts, batch_size=self.encode_batch_size)
        return F.normalize(vectors, dim=-1)

    def guide_rows(self, rows: Tensor) -> Tensor:
        """Guide embeddings of corpus rows (any shape S) -> (*S, D_guide); a row is embedded the
        first time it is asked for, then read from the cache."""
        rows = rows.cpu()
        missing = rows[self._guide_slot[rows] < 0].unique()
        if len(missing):
            vectors = self._guide_encode([self._token_ids[r] for r in missing.tolist()])
            if not self._guide_store.numel():
                self._guide_store = vectors.new_zeros(0, vectors.shape[1])
            first = len(self._guide_store)
            self._guide_slot[missing] = torch.arange(first, first + len(missing))
            self._guide_store = torch.cat([self._guide_store, vectors])
        return self._guide_store[self._guide_slot[rows]]

    def observe(self, batch) -> None:
        """With a guide: its embeddings of this step's anchors and positives."""
        if self.guide is None:
            return
        rows = {
            f: [ids[m.bool()].tolist() for ids, m in zip(*field_rows(batch, f))]
            for f in ("anchor", "positive")
            if f in batch.fields
        }
        vectors = self._guide_encode(rows["anchor"] + rows.get("positive", []))
        anchors, positives = vectors[: batch.size], vectors[batch.size :]
        self._guide_batch = (int(self.steps), anchors, positives if len(positives) else None)

    def _guide_scores(self, indices: Tensor, num_anchors: int) -> tuple[Tensor, Tensor]:
        """Guide cosines of each anchor with its neighbours (Q, K) and with its positive (Q,)."""
        if self._guide_batch is None or self._guide_batch[0] != int(self.steps):
            raise ConfigError(
                "negative_mining.guide needs this step's batch: the objective must call miner.observe(batch) first"
            )
        _, anchors, positives = self._guide_batch
        if len(anchors) != num_anchors:
            raise ConfigError(
                f"negative_mining.guide saw {len(anchors)} anchors in the batch but was asked about {num_anchors}"
            )
        candidates = self.guide_rows(self.index_rows.cpu()[indices.cpu()])  # (Q, K, D_guide)
        scores = (candidates * anchors[:, None]).sum(-1)  # (Q, K)
        if positives is None:
            return scores, torch.full((num_anchors,), float("inf"))
        return scores, (anchors * positives).sum(-1)

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
        """Index position of each anchor's negative (B,) (or (B, n), see `pick`), -1 where none
        survives the filter."""
        queries = F.normalize(anchors.detach().float(), dim=-1)
        scores, indices = nearest_neighbours(queries, self.index_embeddings, self.ranks[1])
        if self.guide is not None:  # the guide's cosines decide, the model's ranks propose
            scores, positive_sim = self._guide_scores(indices, len(queries))
        elif positives is None:  # nothing to compare with: keep every candidate
            positive_sim = torch.full((len(queries),), float("inf"))
        else:
            positive_sim = (queries * F.normalize(positives.detach().float(), dim=-1)).sum(-1)
        gen = draw_generator(self.seed, int(self.steps), stream=500_009)
        scores, indices = scores.to(queries.device), indices.to(queries.device)
        positive_sim = positive_sim.to(queries.device)
        return self.pick(scores, indices, positive_sim, gen)

    def pick(self, scores: Tensor, indices: Tensor, positive_sim: Tensor, gen) -> Tensor:
        """The selection rule: GISTEmbed's margin, one uniform draw in the rank window; a
        subclass (positive_aware) swaps the rule and may return (B, n) positions."""
        return pick_in_window(scores, indices, positive_sim, self.ranks, self.margin, gen)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The index size is only known once built: take the saved shape before loading into it.
        take_saved_shapes(self, state_dict, prefix, ("index_embeddings", "index_rows"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
