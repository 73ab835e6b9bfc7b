"""Regularizers: the alignment/uniformity math by hand, and composition with any objective."""

import math

import pytest
import torch

from csetrain.losses import alignment, uniformity
from csetrain.objectives.simcse_unsup import SimCSEUnsup
from csetrain.regularizers.align_uniform import AlignUniform
from csetrain.regularizers.regularized import Regularized

from .test_config import _compose
from .test_objectives import _unsup_batch


def test_alignment_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert alignment(x, x * 3).item() == pytest.approx(0.0, abs=1e-7)  # same directions
    y = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # distances sqrt(2) and 2
    assert alignment(x, y).item() == pytest.approx((2 + 4) / 2)


def test_uniformity_by_hand():
    antipodal = torch.tensor([[1.0, 0.0], [-2.0, 0.0]])  # one pair at squared distance 4
    assert uniformity(antipodal, t=2).item() == pytest.approx(-8.0)
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    # 6 pairs: 4 at squared distance 2, 2 at 4
    expected = math.log((4 * math.exp(-4) + 2 * math.exp(-8)) / 6)
    assert uniformity(square, t=2).item() == pytest.approx(expected, rel=1e-5)


def test_regularizer_adds_its_weighted_terms(tiny_encoder):
    batch = _unsup_batch(tiny_encoder)
    tiny_encoder.eval()
    plain = SimCSEUnsup()(tiny_encoder, batch)
    reg = AlignUniform(align_weight=0.5, uniform_weight=0.25)
    out = Regularized(SimCSEUnsup(), {"align_uniform": reg})(tiny_encoder, batch)
    views = SimCSEUnsup().embed(tiny_encoder, batch)
    a, p = views["anchor"], views["positive"]
    extra = 0.5 * alignment(a, p) + 0.25 * (uniformity(a) + uniformity(p)) / 2
    assert out.loss.item() == pytest.approx(plain.loss.item() + extra.item(), abs=1e-5)
    assert {"objective_loss", "align_uniform_loss", "align_uniform/uniformity"} <= set(out.metrics)


def test_regularizer_group_composes_into_training(tmp_path):
    from .test_train import _run_tiny

    tracker, components = _run_tiny(
        tmp_path, ["regularizer=[align_uniform]", "trainer.max_steps=2"]
    )
    assert list(components.objective.regularizers) == ["align_uniform"]
    assert len(tracker.series("train/align_uniform_loss")) == 2
    assert _compose(["regularizer=[align_uniform]"]).regularizer.align_uniform.t == 2.0
