"""WhitenedCSE: whitened groups have identity covariance, no gradient flows through the whitening
matrix, every view gets its own permutation, and the objective trains end to end."""

import math

import pytest
import torch

from csetrain.config import ConfigError
from csetrain.losses import info_nce
from csetrain.objectives.whitenedcse import (
    WhitenedCSE,
    group_whitening_matrices,
    shuffled_group_whiten,
)

from .test_objectives import _unsup_batch


def _grouped(x, perm, groups):
    """(B, D) -> centred (G, B, C) groups of the permuted channels, as SGW forms them."""
    g = x[:, perm].reshape(x.shape[0], groups, -1).transpose(0, 1)
    return g - g.mean(dim=1, keepdim=True)


def test_whitened_groups_have_identity_covariance():
    gen = torch.Generator().manual_seed(0)
    mixing = torch.randn(24, 24, generator=gen)
    x = torch.randn(64, 24, generator=gen) @ mixing + 3.0  # correlated, off-centre channels
    perm = torch.randperm(24, generator=gen)
    eps = 1e-5
    white = shuffled_group_whiten(x, perm, num_groups=4, eps=eps)
    groups = _grouped(white, perm, 4)  # the same groups, after whitening
    cov = groups.transpose(1, 2) @ groups / 64  # (4, 6, 6)
    # With eps the covariance is U diag(λ/(λ+eps)) Uᵀ, not exactly I: account for it.
    eigvals, eigvecs = torch.linalg.eigh(_cov(_grouped(x, perm, 4)))
    expected = eigvecs @ torch.diag_embed(eigvals / (eigvals + eps)) @ eigvecs.transpose(1, 2)
    assert torch.allclose(cov, expected, atol=1e-4)
    assert torch.allclose(cov, torch.eye(6).expand(4, 6, 6), atol=1e-3)
    before = _cov(_grouped(x, perm, 4))
    assert not torch.allclose(before, torch.eye(6).expand(4, 6, 6), atol=0.1)  # it did work
    # Channels are returned in their original order: whitening the permuted input with the
    # matching permutation gives the permuted output.
    assert torch.allclose(
        shuffled_group_whiten(x[:, perm], torch.arange(24), 4, eps), white[:, perm], atol=1e-5
    )


def _cov(groups):
    return groups.transpose(1, 2) @ groups / groups.shape[1]


def test_no_gradient_flows_through_the_whitening_matrix():
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(16, 8, generator=gen) @ torch.randn(8, 8, generator=gen)).requires_grad_()
    perm = torch.randperm(8, generator=gen)
    upstream = torch.randn(16, 8, generator=gen)
    (shuffled_group_whiten(x, perm, num_groups=2, eps=1e-5) * upstream).sum().backward()
    # By hand, W held constant: y = (x_g - mean(x_g)) W  =>  dL/dx_g = (g - mean(g)) Wᵀ
    w = group_whitening_matrices(_grouped(x.detach(), perm, 2), 1e-5)  # (2, 4, 4)
    g = upstream[:, perm].reshape(16, 2, 4).transpose(0, 1)  # upstream, grouped like x
    grad = (g - g.mean(dim=1, keepdim=True)) @ w.transpose(1, 2)  # (2, 16, 4)
    expected = torch.empty(16, 8)
    expected[:, perm] = grad.transpose(0, 1).reshape(16, 8)
    assert torch.allclose(x.grad, expected, atol=1e-5)
    # The check can tell: letting the gradient through W (full autograd) gives another answer.
    y = x.detach().clone().requires_grad_()
    grouped = _grouped(y, perm, 2)
    eigvals, eigvecs = torch.linalg.eigh(_cov(grouped))
    w_live = eigvecs @ torch.diag_embed((eigvals + 1e-5).rsqrt()) @ eigvecs.transpose(1, 2)
    out = torch.empty(16, 8)
    out[:, perm] = (grouped @ w_live).transpose(0, 1).reshape(16, 8)
    (out * upstream).sum().backward()
    assert not torch.allclose(y.grad, expected, atol=1e-3)


def test_each_view_gets_its_own_permutation(tiny_encoder):
    batch = _unsup_batch(tiny_encoder)
    # No dropout: all three views see identical pooled vectors. The encoder runs in float64:
    # the pooled vectors below come from a batch of another size (the anchors alone), and
    # whitening (float32 in the library, eps 1e-5) amplifies their rounding differences ~300x;
    # float64 vectors that agree to ~1e-16 round to the same float32 values.
    tiny_encoder.double().eval()
    objective = WhitenedCSE(num_groups=8, eps=1e-5)
    torch.manual_seed(0)
    views = objective.embed(tiny_encoder, batch)
    assert set(views) == {"anchor", "positive", "positive2"}
    a, p, q = views["anchor"], views["positive"], views["positive2"]
    assert not torch.allclose(a, p, atol=1e-3) and not torch.allclose(p, q, atol=1e-3)
    # Replaying the RNG gives the three permutations embed drew: pairwise different, and each
    # view is exactly the pooled vectors whitened under its own one.
    torch.manual_seed(0)
    perms = [torch.randperm(32) for _ in range(3)]
    assert not torch.equal(perms[0], perms[1]) and not torch.equal(perms[1], perms[2])
    pooled = tiny_encoder(batch.input_ids[:4], batch.attention_mask[:4], head=False)
    for view, perm in zip((a, p, q), perms):
        assert torch.allclose(view, shuffled_group_whiten(pooled, perm, 8), atol=1e-5)


def test_loss_is_the_sum_of_one_info_nce_per_positive(tiny_encoder):
    batch = _unsup_batch(tiny_encoder)
    objective = WhitenedCSE(num_groups=8)
    tiny_encoder.train()
    torch.manual_seed(0)
    out = objective(tiny_encoder, batch)
    torch.manual_seed(0)
    views = objective.embed(tiny_encoder, batch)  # same RNG: same dropout masks, same perms
    targets = torch.arange(4)
    expected = sum(
        info_nce(views["anchor"], views[k], targets, 0.05)[0] for k in ("positive", "positive2")
    )
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    emb = tiny_encoder.transformer.embeddings.word_embeddings.weight.grad
    assert emb is not None and emb.abs().sum() > 0 and torch.isfinite(emb).all()


def test_bad_group_count_is_one_clear_line(tiny_encoder):
    batch = _unsup_batch(tiny_encoder)
    with pytest.raises(
        ConfigError, match="objective.num_groups=5 does not divide the hidden size 32"
    ):
        WhitenedCSE(num_groups=5).embed(tiny_encoder, batch)


@pytest.mark.parametrize(
    "dim, groups", [(768, 128), (384, 64), (1024, 256), (32, 8), (30, 5), (7, 7)]
)
def test_null_group_count_fits_every_hidden_size(dim, groups):
    """The paper's 6 channels per group where 6 divides D, else the widest divisor below it."""
    assert WhitenedCSE().groups_for(dim) == groups


def test_three_training_steps(tmp_path):
    from .test_train import _run_tiny

    tracker, components = _run_tiny(
        tmp_path,
        [
            "objective=whitenedcse",  # num_groups=null: the tiny model's 32 -> 8 groups of 4
            "model.mlp_head=train_only",
            "trainer.max_steps=3",
        ],
    )
    losses = tracker.series("train/loss")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert len(tracker.series("train/loss_positive2")) == 3
    assert type(components.objective).__name__ == "WhitenedCSE"
