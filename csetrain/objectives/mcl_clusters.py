"""MCL's pure parts: k-means in torch, combined pseudo labels, one-group batches and stage
boundaries (csetrain/objectives/mcl.py uses them; each is tested by hand)."""

from __future__ import annotations

import torch
from torch import Tensor

from csetrain.config import ConfigError


def _squared_distances(points: Tensor, centroids: Tensor, chunk_size: int = 8192) -> Tensor:
    """||x - c||² for every point and centroid: (N, D), (K, D) -> (N, K), a chunk at a time."""
    c_norm = (centroids * centroids).sum(1)  # (K,)
    parts = [
        ((chunk * chunk).sum(1, keepdim=True) - 2 * chunk @ centroids.T + c_norm).clamp(min=0)
        for chunk in points.split(chunk_size)
    ]
    return torch.cat(parts)


def _kmeans_plus_plus(points: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre is drawn with
    probability ∝ its squared distance to the nearest centre chosen so far. -> (k, D)"""
    first = int(torch.randint(len(points), (1,), generator=generator))
    centres = points[first : first + 1]
    nearest = _squared_distances(points, centres).squeeze(1)  # (N,)
    for _ in range(1, k):
        weights = nearest.cpu().double()
        if weights.sum() <= 0:  # fewer distinct points than k: any point will do
            weights = torch.ones_like(weights)
        pick = int(torch.multinomial(weights, 1, generator=generator))
        centres = torch.cat([centres, points[pick : pick + 1]])
        nearest = torch.minimum(nearest, _squared_distances(points, centres[-1:]).squeeze(1))
    return centres


def kmeans(
    points: Tensor, k: int, max_iter: int = 100, tol: float = 1e-5, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding, in torch: points (N, D) -> (centroids (k, D),
    labels (N,)). Stops when the centroids' total squared shift is at most `tol` times the
    data's mean per-coordinate variance (scikit-learn's rule), or after `max_iter` rounds. An
    emptied cluster keeps its previous centroid. Deterministic for a seed (the seeding draws
    from a CPU generator).

    Kept instead of scikit-learn's `KMeans(algorithm="lloyd")`, which gives the same labels and
    centroids from the same seeding (tests/test_mcl.py): ours runs on the device that holds the
    embeddings, and sklearn adds its threads' centroid sums in lock order, so a re-run (a
    resume that re-clusters) is not bitwise the same."""
    points = points.float()
    if not 1 <= k <= len(points):
        raise ConfigError(f"objective.num_clusters={k}: choose 1..{len(points)} (the points)")
    generator = torch.Generator().manual_seed(seed)
    centroids = _kmeans_plus_plus(points, k, generator)
    threshold = tol * points.var(dim=0, unbiased=False).mean()
    labels = _squared_distances(points, centroids).argmin(1)
    for _ in range(max_iter):
        sums = torch.zeros_like(centroids).index_add_(0, labels, points)  # (k, D)
        counts = torch.bincount(labels, minlength=k).to(points.dtype)  # (k,)
        filled = counts > 0
        moved = centroids.clone()
        moved[filled] = sums[filled] / counts[filled, None]
        shift = ((moved - centroids) ** 2).sum()
        centroids = moved
        labels = _squared_distances(points, centroids).argmin(1)
        if shift <= threshold:
            break
    return centroids, labels


def combine_labels(previous: Tensor | None, new: Tensor) -> Tensor:
    """Pseudo labels that separate rows differing in *any* stage's cluster (the paper's
    "cluster assigned in preceding stages"; the official cluster.py builds it as
    label * K + cluster), renumbered 0..G-1: (N,), (N,) -> (N,)."""
    if previous is None or previous.numel() == 0:
        joint = new
    else:
        joint = previous * (int(new.max()) + 1) + new
    return torch.unique(joint, return_inverse=True)[1]


def draw_group_batch(labels: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Positions (size,) into `labels` (N,), all from one group, without repetition.

    A group is drawn with probability ∝ the number of full batches it holds, which is each
    group's share of the official sampler's batches per epoch (it serves clusters in turn and
    skips those with fewer rows than a batch); groups smaller than a batch are never drawn.
    """
    counts = torch.bincount(labels.cpu())  # (G,)
    full_batches = (counts // size).double()
    if full_batches.sum() == 0:
        raise ConfigError(
            f"objective=mcl: no cluster holds a batch of {size} rows (largest {int(counts.max())}): "
            "lower objective.num_clusters or trainer.batch_size, or use more data"
        )
    group = int(torch.multinomial(full_batches, 1, generator=generator))
    members = (labels.cpu() == group).nonzero().squeeze(1)
    return members[torch.randperm(len(members), generator=generator)[:size]]


def stage_boundaries(max_steps: int, stages: int) -> list[int]:
    """Steps after which stage 1, 2, ..., stages-1 ends: equal shares of max_steps."""
    if stages < 1 or max_steps < stages:
        raise ConfigError(
            f"objective.stages={stages}: need 1 <= stages <= trainer.max_steps ({max_steps})"
        )
    return [k * max_steps // stages for k in range(1, stages)]
