"""Pure losses against hand computations (numpy loops over the definitions)."""

import math

import numpy as np
import pytest
import torch

from csetrain.losses import (
    cosine_matrix,
    hard_negative_offset,
    info_nce,
    top1_accuracy,
    uniformity,
)

from .tolerances import softmax_loss_atol


def _hand_info_nce(a, c, targets, temperature, offset=None):
    """-mean_i log softmax_j(cos(a_i, c_j)/T + offset_ij)[target_i], written out."""
    total = 0.0
    for i in range(len(a)):
        logits = []
        for j in range(len(c)):
            cos = float(np.dot(a[i], c[j]) / (np.linalg.norm(a[i]) * np.linalg.norm(c[j])))
            logits.append(cos / temperature + (offset[i][j] if offset is not None else 0.0))
        log_z = math.log(sum(math.exp(v) for v in logits))
        total += log_z - logits[targets[i]]
    return total / len(a)


def test_cosine_matrix_matches_definition():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 2.0], [3.0, 3.0], [-1.0, 0.0]])
    expected = torch.tensor(
        [[0.0, 1 / math.sqrt(2), -1.0], [1 / math.sqrt(2), 1.0, -1 / math.sqrt(2)]]
    )
    assert torch.allclose(cosine_matrix(a, b), expected, atol=1e-6)


def test_info_nce_equals_hand_computation():
    gen = torch.Generator().manual_seed(0)
    a, c = torch.randn(4, 5, generator=gen), torch.randn(6, 5, generator=gen)
    targets = torch.tensor([0, 1, 2, 3])
    loss, logits = info_nce(a, c, targets, temperature=0.05)
    assert logits.shape == (4, 6)
    hand = _hand_info_nce(a.numpy(), c.numpy(), targets.tolist(), 0.05)  # float64
    # float32 cosines of 5 dimensions, softmax over 6 candidates: 6 summed terms at most
    assert abs(loss.item() - hand) < softmax_loss_atol(terms=6, max_abs_logit=1 / 0.05, sides=1)


def test_info_nce_two_by_two_by_hand():
    # anchors orthogonal, candidates = anchors: cos matrix is the identity.
    a = torch.eye(2)
    loss, _ = info_nce(a, a.clone(), torch.tensor([0, 1]), temperature=0.5)
    # each row: logits [2, 0] -> loss = log(e^2 + 1) - 2
    assert abs(loss.item() - (math.log(math.exp(2) + 1) - 2)) < 1e-6


def test_hard_negative_offset_is_simcse_weight_on_own_hard_negative():
    offset = hard_negative_offset(rows=3, columns=6, start=3, weight=math.log(2.0))
    assert offset.shape == (3, 6)
    expected = torch.zeros(3, 6)
    for i in range(3):
        expected[i, 3 + i] = math.log(2.0)
    assert torch.equal(offset, expected)


def test_offset_enters_the_loss_after_temperature():
    gen = torch.Generator().manual_seed(1)
    a, c = torch.randn(3, 4, generator=gen), torch.randn(6, 4, generator=gen)
    targets = torch.arange(3)
    offset = hard_negative_offset(3, 6, 3, 0.7)
    loss, _ = info_nce(a, c, targets, 0.05, offset)
    hand = _hand_info_nce(a.numpy(), c.numpy(), targets.tolist(), 0.05, offset.numpy())
    assert abs(loss.item() - hand) < softmax_loss_atol(
        terms=6, max_abs_logit=1 / 0.05 + 0.7, sides=1
    )


def test_top1_accuracy():
    logits = torch.tensor([[3.0, 1.0], [5.0, 0.0], [0.0, 2.0]])
    assert top1_accuracy(logits, torch.tensor([0, 1, 1])).item() == pytest.approx(2 / 3)


def test_uniformity_stays_finite_where_the_plain_mean_of_exp_underflows():
    # Well-spread rows and a large t: exp(-t d^2) is 0 in float32 for every pair, log 0 = -inf.
    x = torch.eye(4) * torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None]  # squared distances all 2
    naive = torch.pdist(x).pow(2).mul(-100.0).exp().mean().log()
    assert naive.item() == float("-inf")
    assert uniformity(x, t=100.0).item() == pytest.approx(-200.0, rel=1e-6)  # log exp(-100 * 2)
