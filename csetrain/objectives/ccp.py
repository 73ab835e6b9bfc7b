"""`objective=ccp`: Contrastive Context Prediction (Wu et al., IJCAI 2022, arXiv 2206.03281).

A sentence must pick a sentence from its own document's context window out of in-batch and
memory-bank negatives, through a training-only projection whose batch normalisation is
asymmetric. The pure parts (`AsymmetricBatchNorm`, `sentence_ids`, `duplicate_mask`) come first.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csetrain.config import ConfigError, CsetrainError
from csetrain.data.collate import Batch
from csetrain.distributed import gather_with_grad, rank_and_world
from csetrain.losses import info_nce, top1_accuracy
from csetrain.negatives.base import NegativeMiner
from csetrain.negatives.fifo import FIFO
from csetrain.negatives.in_batch import InBatch
from csetrain.objectives.base import Objective, ObjectiveOutput, checked_temperature


class AsymmetricBatchNorm(nn.Module):
    """BatchNorm1d whose caller picks the statistics on each call. `batch_statistics=True`
    normalises by this batch's mean and biased variance and moves the running estimates toward
    them (PyTorch's training mode); `False` normalises each row by the running estimates alone
    (evaluation mode), so a row's output carries nothing from the other rows of its batch.

    The n-th batch moves the running estimates with weight max(momentum, 1/n) (an unbiased start:
    after one batch they are its statistics) instead of PyTorch's fixed momentum from a (0, 1)
    prior, which would leave the keys of a short run's first steps, kept in the bank, normalised
    unlike all later ones."""

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # batches seen

    def forward(self, x: Tensor, batch_statistics: bool) -> Tensor:
        momentum = self.momentum
        if batch_statistics:
            self.updates += 1
            momentum = max(self.momentum, 1.0 / int(self.updates))
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=batch_statistics,
            momentum=momentum,
            eps=self.eps,
        )


class ProjectionHead(nn.Module):
    """CCP's training-only projection: Linear -> asymmetric BN -> Linear -> l2-normalise."""

    def __init__(self, dim_in: int, dim: int, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.first = nn.Linear(dim_in, dim)
        self.norm = AsymmetricBatchNorm(dim, bn_momentum)
        self.second = nn.Linear(dim, dim)

    def forward(self, x: Tensor, batch_statistics: bool) -> Tensor:
        """(N, dim_in) -> (N, dim) unit rows, in float32 even under autocast (batch statistics
        of bf16/fp16 activations are too coarse)."""
        with torch.autocast(x.device.type, enabled=False):
            h = self.norm(self.first(x.float()), batch_statistics)
            return F.normalize(self.second(h), dim=-1)


@functools.cache
def _position_weights(device: torch.device) -> Tensor:
    """Fixed pseudo-random 62-bit multipliers, one per token position (up to 8,192)."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(1, 2**62, (8192,), generator=gen).to(device)


def sentence_ids(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """A 64-bit hash of each row's unpadded token ids: (N, L) -> (N,) int64. Equal token
    sequences get equal ids (whatever their padding); int64 products wrap, which is the hash."""
    weights = _position_weights(input_ids.device)[: input_ids.shape[1]]  # (L,)
    return ((input_ids + 1) * weights * attention_mask).sum(dim=1)


def duplicate_mask(query_ids: Tensor, candidate_ids: Tensor, targets: Tensor) -> Tensor:
    """(B, C) True where candidate c is the very sentence of query i or of its target (but not
    the target itself): a false negative that the loss must not push away."""
    target_ids = candidate_ids[targets]  # (B,)
    same = (candidate_ids[None, :] == query_ids[:, None]) | (
        candidate_ids[None, :] == target_ids[:, None]
    )  # (B, C)
    same[torch.arange(len(targets), device=targets.device), targets] = False
    return same


class CCP(Objective):
    """Contrastive context prediction: InfoNCE of a center sentence against a sentence of its
    context window, and vice versa, over in-batch and memory-bank negatives.

    Batch fields: `anchor` (center) and `positive` (a sentence at most `window` lines away in
    the same document) from the corpus: `data=wiki_neighbours` (picked by conf/objective/ccp.yaml;
    `data=sample_neighbours` offline). No augmentation (dropout differs between the two
    sentences anyway); miner: `in_batch` only, because the bank is the objective's own (its keys
    live in the projection space, which only this objective knows).

    Per step, with z = the encoder's pooled output of each sentence:
      keys    k = head(z) with the BN's *running* statistics (as they were before this step);
      queries q = head(z) with *this batch's* statistics (updating the running ones), for the
              anchors, then for the positives.
    Loss = mean of CE(q_anchor . [k_positive | bank] / t) and CE(q_positive . [k_anchor | bank] / t).
    This is the asymmetric batch normalisation: BN over the batch lets a positive pair recognise
    each other through the shared batch statistics instead of their content (information
    leakage, as MoCo found); keys normalised by running statistics carry no trace of the batch, so
    in-batch keys and bank keys (computed in earlier batches) look alike. Both directions run
    every step, so each side of a pair is query once and key once ("alternately").
    Bank: a FIFO of the last `bank_size` keys (detached; anchors' and positives' of each step),
    filled after the optimizer step. Inference drops the head: the encoder's pooled output (CLS
    in the paper) is the embedding.

    Sources and deviations. The released code (wuning0929/CCP_IJCAI22) holds only the DPR
    fine-tuning stage, not this pre-training, so the paper is the spec. What we could read of it
    (abstract, introduction) gives the context window, the prediction in both directions, the
    language-specific memory bank and asymmetric BN; a third-party summary of its method section
    gives the projection (two linear layers separated by BN, then l2-normalisation), the bank of
    previous batches' embeddings, BN alternating between batch and running statistics, and the
    CLS vector at inference. Ours: the paper's
    memory bank is per language (negatives from the anchor's language); our corpora are English
    only, so it is one bank. In-batch keys of the other rows are negatives too. No activation
    between the two linear layers (none is described). The BN's running statistics start from
    the first batch (see `AsymmetricBatchNorm`) and the first step's keys, normalised by the
    (0, 1) prior, are not banked: in a short run they would stay in the bank as a block of
    differently normalised negatives. Negatives that are the very same
    sentence as the query or its target (reverse pairs, the same sentence sampled again, or
    still in the bank) are masked: on a small corpus the bank holds a large share of it (the
    paper's corpus is CCNet in 108 languages, where such repeats are negligible). The window,
    bank size and temperature of the paper could not be verified here (see
    conf/experiment/ccp_bert_base.yaml). Under DDP the BN batch statistics are per process (no
    SyncBN) and the running statistics are rank 0's in a checkpoint.
    """

    data_fields = ("anchor", "positive")
    augmented_positive = False

    def __init__(
        self,
        miner: NegativeMiner | None = None,
        temperature: float = 0.05,
        bank_size: int = 4096,
        projection_dim: int | None = None,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__(miner)
        if not isinstance(self.miner, InBatch):
            raise ConfigError(
                f"objective=ccp keeps its own memory bank, so negative_mining={type(self.miner).__name__} would mix spaces: set negative_mining=in_batch"
            )
        if bank_size < 0:
            raise ConfigError(f"objective.bank_size={bank_size}: choose 0 (no bank) or more")
        self.temperature, self.bank_size = checked_temperature(temperature), bank_size
        self.projection_dim, self.bn_momentum = projection_dim, bn_momentum
        self.register_module("head", None)  # built by bind(): its input size is the encoder's
        # keys (K, dim) once bound and their sentence_ids (K,); newest last
        self.bank = FIFO(bank_size, keys=torch.float32, ids=torch.long)
        self._pending: tuple[Tensor, Tensor] | None = None  # this step's keys, banked after it

    def bind(self, encoder: nn.Module, dataset=None) -> None:
        """Build the projection head and size the bank (before the optimizer and any resume)."""
        super().bind(encoder, dataset)
        if self.head is not None:
            return
        dim = self.projection_dim or encoder.hidden_size
        device = next(encoder.parameters()).device
        self.head = ProjectionHead(encoder.hidden_size, dim, self.bn_momentum).to(device)
        self.bank.allocate(device, keys=(dim,), ids=())

    def loss(self, views: dict[str, Tensor], batch: Batch) -> ObjectiveOutput:
        if self.head is None:
            raise CsetrainError("objective=ccp: call bind(encoder) before the first step")
        ids = batch.split(sentence_ids(batch.input_ids, batch.attention_mask))  # {field: (B,)}
        # Keys first, so the running statistics they use hold nothing of this batch yet. Keys
        # made before the BN has seen any batch (the (0, 1) prior) are not banked.
        bankable = int(self.head.norm.updates) > 0
        keys = {f: self.head(views[f], batch_statistics=False) for f in self.data_fields}
        # Under DDP every rank scores its queries against all ranks' keys (rank r's row i is
        # row r*B + i); on one process these are the local tensors.
        all_keys = {f: gather_with_grad(keys[f]) for f in self.data_fields}  # (W*B, dim)
        all_ids = {f: gather_with_grad(ids[f]) for f in self.data_fields}
        first = rank_and_world()[0] * batch.size
        targets = first + torch.arange(batch.size, device=batch.input_ids.device)
        losses, accuracies, repeats, metrics = [], [], [], {}
        for query, key in (("anchor", "positive"), ("positive", "anchor")):
            queries = self.head(views[query], batch_statistics=True)  # (B, dim)
            loss, logits, masked = self.predict(
                queries, ids[query], all_keys[key], all_ids[key], targets
            )
            losses.append(loss)
            accuracies.append(top1_accuracy(logits.detach(), targets))
            repeats.append(masked.sum(dim=1).float().mean())
            metrics[f"loss_{query}_to_{key}"] = loss.detach()
        metrics["acc"] = (accuracies[0] + accuracies[1]) / 2
        metrics["masked_repeats"] = (repeats[0] + repeats[1]) / 2  # false negatives per row
        metrics["bank_filled"] = self.bank.filled.float()
        self._pending = (
            (
                torch.cat([all_keys["anchor"], all_keys["positive"]]).detach(),
                torch.cat([all_ids["anchor"], all_ids["positive"]]),
            )
            if bankable
            else None
        )
        return ObjectiveOutput((losses[0] + losses[1]) / 2, metrics)

    def predict(
        self, queries: Tensor, query_ids: Tensor, keys: Tensor, key_ids: Tensor, targets: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """InfoNCE of queries (B, dim) over [keys (W*B, dim) | bank (M, dim)], repeats of the
        query's or the target's sentence masked out -> (loss, logits (B, C), mask (B, C))."""
        candidates = torch.cat([keys, self.bank.valid("keys")])  # (C, dim), C = W*B + M
        bank_ids = self.bank.valid("ids")  # (M,)
        masked = duplicate_mask(query_ids, torch.cat([key_ids, bank_ids]), targets)
        offset = torch.zeros(masked.shape, device=masked.device).masked_fill(masked, -torch.inf)
        loss, logits = info_nce(queries, candidates, targets, self.temperature, offset)
        return loss, logits, masked

    def after_optimizer_step(self, encoder: nn.Module, batch: Batch) -> None:
        super().after_optimizer_step(encoder, batch)
        if self._pending is not None:  # the oldest keys fall off the bank's front
            keys, ids = self._pending
            self.bank.push(keys=keys, ids=ids)
            self._pending = None
