"""`objective=mcl`: Multistage Contrastive Learning (Zhang, Lan et al., ECCV 2024, "Learning the
Unlearned: Mitigating Feature Suppression in Contrastive Learning", arXiv 2402.11816; official
code MajorDavidZhang/MCL).

Stage 1 is ordinary contrastive training. At the end of each stage the stage's model embeds the
training corpus and k-means clusters it; stage k (k >= 2) trains on batches drawn from one
pseudo-label group (the rows that share every earlier stage's cluster), so an anchor's negatives
all lie in its own group: they already agree on what earlier stages learned, and telling them
apart needs new features. The final embedding concatenates every stage's embedding.

The pure parts (`kmeans`, `combine_labels`, `draw_group_batch`, `stage_boundaries`) are in
mcl_clusters.py.
"""

from __future__ import annotations

import weakref
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csetrain.config import ConfigError
from csetrain.data.collate import pad
from csetrain.negatives.base import NegativeMiner, take_saved_shapes
from csetrain.objectives.base import InfoNCEObjective, ObjectiveOutput
from csetrain.objectives.mcl_clusters import (
    combine_labels,
    draw_group_batch,
    kmeans,
    stage_boundaries,
)
from csetrain.seeding import draw_generator

StageInit = Literal["initial", "previous"]


class MCL(InfoNCEObjective):
    """SimCSE-style InfoNCE per stage, with feature-aware negative sampling from stage 2 on and
    the stages' embeddings concatenated at inference.

    Batch fields: `anchor` from the corpus; `positive` built from it by the augmentation
    (`augmentation=dropout`, unsupervised SimCSE views). Miner: `in_batch` (any other miner adds
    negatives from outside the anchor's group). Loss: InfoNCE, temperature 0.05.

    Schedule: `stages` equal shares of `max_steps` (= trainer.max_steps). After the last step of
    stage k < stages (in `after_optimizer_step`): the trained model is frozen into stage slot k
    (a copy held by this objective, so it checkpoints with it); that model embeds the corpus
    (`cluster_sample` seeded rows of the tokenized training set handed to `bind`; null = all;
    eval mode, no gradient, training embedding = head applied, unit-normalised as the official
    cluster.py does); `kmeans` splits them into `num_clusters` clusters; the rows' pseudo label
    becomes the combination of every stage's cluster so far (`combine_labels`); the live encoder
    restarts from the initial weights (`stage_init: initial`) or goes on from the stage's
    (`previous`). Every batch of stage k+1 is then drawn from one pseudo-label group
    (`batch_indices`, seeded by (seed, step): a resume draws the same batches). Cluster labels,
    rows, frozen stages and the step count are registered state: a resume mid-stage restores them.

    Inference (dev evaluation, the saved model, `csetrain eval`): the frozen stages' embeddings
    and the live model's, each unit-normalised, concatenated in stage order
    (`SentenceEncoder.stack_before`), so the cosine of two sentences is the mean of the
    stages' cosines. The sentence-transformers folder cannot express parallel transformers: it
    holds the last stage as the loadable model and the earlier ones in `prefix_<i>/` subfolders
    that csetrain's loader concatenates (`SentenceTransformer(path)` gives the last stage only).

    Paper/code and the adaptations here:
    - Stage initialisation: the official recipe fine-tunes every stage from the same pretrained
      weights (`--pretrained openai`), and we follow it (`stage_init: initial`). One csetrain
      run has one optimizer and one LR schedule: the restarted stage keeps AdamW's moment
      estimates and the schedule's position (the official code starts a fresh run per stage,
      with a constant LR after warmup; the preset uses a constant schedule for that reason).
    - Earlier stages are frozen (the paper keeps their representations and integrates them).
    - Batches: the official sampler fills each batch from a single pseudo-label cluster and
      serves clusters in turn; we draw the group per step ∝ its full batches (same per-epoch
      shares, rows may repeat across steps within a stage before an epoch is through).
    - Pseudo labels: the paper combines the clusters of all preceding stages; the official
      cluster.py means to (label*K + cluster over stages) but reloads the current stage's file
      in its loop, so it uses the last stage's clusters only. We follow the paper.
    - Stage 1 clusters the corpus with its own trained model (the paper's unimodal setting);
      the CLIP recipe clusters the pretrained model before its first stage instead.
    - k-means: full-batch Lloyd in torch (official: scikit-learn MiniBatchKMeans, batch 10^6,
      100 iterations, tol 1e-5, 10 clusters); `cluster_sample` caps the corpus for speed.
    - Integration: the paper concatenates the stages' features for a linear probe; for cosine
      similarity each stage is unit-normalised first, so no stage dominates by its norm.
    """

    data_fields = ("anchor",)
    augmented_positive = True

    def __init__(
        self,
        miner: NegativeMiner | None = None,
        temperature: float = 0.05,
        stages: int = 2,
        max_steps: int = 1000,
        num_clusters: int = 10,
        stage_init: StageInit = "initial",
        cluster_sample: int | None = None,
        kmeans_iters: int = 100,
        kmeans_tol: float = 1e-5,
        encode_batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(miner, temperature)
        if stage_init not in ("initial", "previous"):
            raise ConfigError(
                f"objective.stage_init='{stage_init}' is unknown: choose initial or previous"
            )
        if num_clusters < 2:
            raise ConfigError(f"objective.num_clusters={num_clusters}: must be >= 2")
        self.boundaries = stage_boundaries(max_steps, stages)
        self.stages, self.num_clusters, self.stage_init = stages, num_clusters, stage_init
        self.cluster_sample, self.seed = cluster_sample, seed
        self.kmeans_iters, self.kmeans_tol = kmeans_iters, kmeans_tol
        self.encode_batch_size = encode_batch_size
        # Checkpointed state (the row/label buffers are resized on load).
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("completed_stages", torch.zeros((), dtype=torch.long))
        self.register_buffer("cluster_rows", torch.zeros(0, dtype=torch.long))  # (N,) corpus rows
        self.register_buffer("cluster_labels", torch.zeros(0, dtype=torch.long))  # (N,) groups
        self.frozen_stages = nn.ModuleList()  # filled by bind: one slot per stage but the last
        self._encoder = None  # weakref to the live encoder
        self._initial_state: dict[str, Tensor] = {}
        self._outer_prefixes: list = []
        self._token_ids: list[list[int]] = []
        self.register_load_state_dict_post_hook(lambda module, _keys: module._attach_stages())

    # --- binding and state -----------------------------------------------------------------
    def bind(self, encoder: nn.Module, dataset=None) -> None:
        super().bind(encoder, dataset)
        if dataset is None or "anchor_ids" not in dataset.column_names:
            raise ConfigError(
                "objective=mcl needs the tokenized training corpus: bind(encoder, dataset) with an anchor_ids column"
            )
        self._encoder = weakref.ref(encoder)  # the live encoder: not a submodule, not saved
        self._token_ids = dataset["anchor_ids"]
        # A model that already concatenates (a saved MCL model) keeps its stages in front.
        self._outer_prefixes = encoder.stacked_before()
        self._initial_state = encoder.snapshot()
        self.frozen_stages = nn.ModuleList(encoder.frozen_copy() for _ in range(self.stages - 1))

    def _attach_stages(self) -> None:
        """The live encoder's inference concatenates the stages finished so far."""
        encoder = self._encoder() if self._encoder is not None else None
        if encoder is not None:
            done = list(self.frozen_stages[: int(self.completed_stages)])
            encoder.stack_before(self._outer_prefixes + done)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The clustered rows are only known once a stage ends: take the saved sizes first.
        take_saved_shapes(self, state_dict, prefix, ("cluster_rows", "cluster_labels"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- batches ---------------------------------------------------------------------------
    def batch_indices(self, step: int, indices: list[int]) -> list[int]:
        """Stage 1: the sampler's rows. Later stages: as many rows, all from one pseudo-label
        group, a pure function of (seed, step) and the labels."""
        if int(self.completed_stages) == 0:
            return indices
        gen = draw_generator(self.seed, step, stream=700_001)
        positions = draw_group_batch(self.cluster_labels, len(indices), gen)
        return self.cluster_rows.cpu()[positions].tolist()

    def loss(self, views: dict[str, Tensor], batch) -> ObjectiveOutput:
        out = super().loss(views, batch)
        stage = torch.full((), int(self.completed_stages) + 1, dtype=torch.float)
        out.metrics["stage"] = stage
        return out

    # --- stage boundaries ------------------------------------------------------------------
    def after_optimizer_step(self, encoder: nn.Module, batch) -> None:
        super().after_optimizer_step(encoder, batch)
        self.steps += 1
        if int(self.steps) in self.boundaries:
            self.finish_stage(encoder)

    @torch.no_grad()
    def finish_stage(self, encoder: nn.Module) -> None:
        """Freeze the stage's model, cluster the corpus with it, start the next stage."""
        stage = int(self.completed_stages)
        self.frozen_stages[stage].restore(encoder.state_dict())
        if self.cluster_rows.numel() == 0:  # the same rows every stage, so labels combine
            self.cluster_rows = self._sample_rows().to(self.steps.device)
        points = self.embed_rows(encoder, self.cluster_rows.tolist())
        _, labels = kmeans(
            points, self.num_clusters, self.kmeans_iters, self.kmeans_tol, self.seed + stage
        )
        self.cluster_labels = combine_labels(self.cluster_labels, labels.to(self.steps.device))
        self.completed_stages += 1
        if self.stage_init == "initial":
            encoder.restore(self._initial_state)
        self._attach_stages()

    def _sample_rows(self) -> Tensor:
        corpus_size = len(self._token_ids)
        rows = torch.randperm(corpus_size, generator=torch.Generator().manual_seed(self.seed))
        return rows[: self.cluster_sample] if self.cluster_sample else rows

    def embed_rows(self, encoder: nn.Module, rows: list[int]) -> Tensor:
        """Unit-normalised training embeddings (eval mode, no gradient) of corpus rows (N, D),
        encoded in length-sorted batches (pads least), returned in `rows` order."""
        order = sorted(range(len(rows)), key=lambda i: len(self._token_ids[rows[i]]))
        was_training = encoder.training
        encoder.eval()
        parts = []
        for start in range(0, len(order), self.encode_batch_size):
            chunk = [
                self._token_ids[rows[i]] for i in order[start : start + self.encode_batch_size]
            ]
            ids, mask = pad(chunk, encoder.tokenizer.pad_token_id)
            parts.append(encoder(ids.to(encoder.device), mask.to(encoder.device)).float())
        encoder.train(was_training)
        embeddings = torch.empty(len(rows), parts[0].shape[1], device=parts[0].device)
        embeddings[torch.tensor(order, device=parts[0].device)] = torch.cat(parts)
        return F.normalize(embeddings, dim=-1)
