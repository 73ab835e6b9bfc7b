"""negative_mining=mixup: the mixtures lie on the segments between unit anchor and unit partner
positive, never use the anchor's own positive, come in the configured number, keep gradients,
and train end to end with simcse_unsup."""

import math

import pytest
import torch
import torch.nn.functional as F

from csetrain.config import ConfigError
from csetrain.negatives.mixup import Mixup, partner_index
from csetrain.objectives.simcse_unsup import SimCSEUnsup

from .test_objectives import _unsup_batch


def _views(batch=5, dim=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "anchor": torch.randn(batch, dim, generator=gen, requires_grad=True),
        "positive": torch.randn(batch, dim, generator=gen, requires_grad=True),
    }


@pytest.mark.parametrize("lam", [0.5, 0.8, None])
def test_mixtures_lie_on_the_segments(lam):
    views = _views()
    torch.manual_seed(0)
    out = Mixup(per_anchor=2, lam=lam).extra_negatives(views["anchor"], views)
    a, p = F.normalize(views["anchor"], dim=-1), F.normalize(views["positive"], dim=-1)
    assert out.embeddings.shape == (10, 7) and not out.aligned
    for row, (i, j) in enumerate([(i, (i + s) % 5) for s in (1, 2) for i in range(5)]):
        m, start, direction = out.embeddings[row], a[i], p[j] - a[i]
        # m = a_i + (1 - lam) (p_j - a_i): solve for the coefficient, check the residual is zero
        t = torch.dot(m - start, direction) / direction.dot(direction)
        assert 0.0 <= t.item() <= 1.0
        assert torch.allclose(m, start + t * direction, atol=1e-6)
        if lam is not None:
            assert t.item() == pytest.approx(1 - lam, abs=1e-6)


def test_partners_never_the_own_row_and_counts():
    idx = partner_index(6, 3)
    assert idx.shape == (18,)
    rows = torch.arange(6).repeat(3)
    assert not (idx == rows).any()
    for block in idx.view(3, 6):
        assert sorted(block.tolist()) == list(range(6))  # each block is a permutation


def test_single_mixture_is_aligned_and_keeps_gradients():
    views = _views(batch=4)
    out = Mixup(per_anchor=1, lam=0.7).extra_negatives(views["anchor"], views)
    assert out.aligned and out.embeddings.shape == (4, 7)
    out.embeddings.sum().backward()
    assert views["anchor"].grad.abs().sum() > 0 and views["positive"].grad.abs().sum() > 0


def test_beta_draws_are_seeded():
    views = _views()
    torch.manual_seed(3)
    first = Mixup(lam=None, beta_alpha=0.4).extra_negatives(views["anchor"], views).embeddings
    torch.manual_seed(3)
    again = Mixup(lam=None, beta_alpha=0.4).extra_negatives(views["anchor"], views).embeddings
    assert torch.equal(first, again)


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="negative_mining.lam"):
        Mixup(lam=1.5)
    views = _views(batch=2)
    with pytest.raises(ConfigError, match="negative_mining.per_anchor"):
        Mixup(per_anchor=2).extra_negatives(views["anchor"], views)


def test_mixtures_make_the_unsup_loss_harder(tiny_encoder):
    batch = _unsup_batch(tiny_encoder)
    tiny_encoder.eval()
    plain = SimCSEUnsup()(tiny_encoder, batch).loss
    mixed = SimCSEUnsup(miner=Mixup(lam=0.5))(tiny_encoder, batch).loss
    assert mixed.item() > plain.item()


def test_three_training_steps_with_simcse_unsup(tmp_path):
    from .test_train import _run_tiny

    tracker, c = _run_tiny(
        tmp_path, ["objective=simcse_unsup", "negative_mining=mixup", "trainer.max_steps=3"]
    )
    assert isinstance(c.objective.miner, Mixup)
    losses = tracker.series("train/loss")
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
