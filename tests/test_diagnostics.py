"""Diagnostics: each pure function against values worked by hand or with numpy, then the
encoder-level class for determinism and its keys."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from csetrain.eval.diagnostics import (
    Diagnostics,
    alignment,
    anisotropy,
    effective_negatives,
    length_bias,
    uniformity,
)


def test_alignment_by_hand():
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert alignment(x, 2 * x).item() == pytest.approx(0.0)  # scale does not matter: normalised
    # (1,0) vs (0,1): squared distance 2; (1,0) vs (-1,0): 4 -> mean 3
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 5.0], [-2.0, 0.0]])
    assert alignment(a, b).item() == pytest.approx(3.0)
    assert alignment(a, b, alpha=1).item() == pytest.approx((math.sqrt(2) + 2) / 2)


def test_uniformity_by_hand():
    antipodal = torch.tensor([[0.0, 2.0], [0.0, -1.0]])
    assert uniformity(antipodal).item() == pytest.approx(-8.0)  # log exp(-2 * 4)
    assert uniformity(torch.ones(4, 3)).item() == pytest.approx(0.0, abs=1e-6)
    # three unit vectors at 0, 90, 180 degrees: squared distances 2, 4, 2
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    expected = math.log((2 * math.exp(-4) + math.exp(-8)) / 3)
    assert uniformity(x).item() == pytest.approx(expected)


def test_uniformity_and_alignment_match_numpy_on_random_data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g)
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    yn = y.double().numpy() / np.linalg.norm(y.double().numpy(), axis=1, keepdims=True)
    assert alignment(x, y.double()).item() == pytest.approx(np.mean(np.sum((xn - yn) ** 2, axis=1)))
    pairs = [np.sum((xn[i] - xn[j]) ** 2) for i in range(7) for j in range(i + 1, 7)]
    assert uniformity(x).item() == pytest.approx(np.log(np.mean(np.exp(-2 * np.array(pairs)))))


def test_anisotropy_by_hand_and_against_the_pairwise_mean():
    assert anisotropy(torch.tensor([[1.0, 2.0]] * 3)).item() == pytest.approx(1.0)
    assert anisotropy(torch.eye(4)).item() == pytest.approx(0.0, abs=1e-7)
    assert anisotropy(torch.tensor([[1.0, 0.0], [-3.0, 0.0]])).item() == pytest.approx(-1.0)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(x[:, None], x[None, :], dim=-1)
    off_diagonal = cos[~torch.eye(6, dtype=torch.bool)]
    assert anisotropy(x).item() == pytest.approx(off_diagonal.mean().item())


def test_length_bias_counts_words_and_is_scipy_spearman():
    first = ["a b c", "a", "a b c d e", "x y"]
    second = ["a b c", "a b c", "a", "x y z w w w"]  # word gaps 0, 2, 4, 4
    scores = torch.tensor([0.9, 0.5, 0.2, 0.3])
    expected = spearmanr([0, 2, 4, 4], [0.9, 0.5, 0.2, 0.3]).statistic
    assert length_bias(first, second, scores) == pytest.approx(expected)
    assert length_bias(first, second, scores) < 0


def test_effective_negatives_by_hand():
    # equal negatives: every anchor has exactly C - 1 = 3 of them, whatever the positive's logit
    logits = torch.zeros(4, 4)
    logits.fill_diagonal_(10.0)
    assert effective_negatives(logits).item() == pytest.approx(3.0)
    # one negative dominates: close to 1
    one_hard = torch.tensor([[5.0, 100.0, 0.0], [0.0, 5.0, -100.0]])
    assert effective_negatives(one_hard, torch.tensor([0, 1])).item() == pytest.approx(1.0)
    # a worked row: negatives with logits log 1, log 3 -> p = (1/4, 3/4)
    row = torch.tensor([[7.0, 0.0, math.log(3.0)]])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert effective_negatives(row, torch.tensor([0])).item() == pytest.approx(math.exp(h))


def test_effective_negatives_ignores_masked_columns_and_labels_choose_the_positive():
    logits = torch.tensor([[0.0, 0.0, float("-inf"), 0.0]])  # 3 live columns, 1 positive
    assert effective_negatives(logits, torch.tensor([3])).item() == pytest.approx(2.0)
    assert effective_negatives(logits, torch.tensor([0])).item() == pytest.approx(2.0)


def test_diagnostics_class_keys_determinism_and_sampling(data_dir, tiny_encoder):
    full = Diagnostics(data_dir=str(data_dir))
    assert full.positive.sum() == 264  # STS-B dev pairs with gold >= 4.0 (56 of them at 4.0)
    assert -1 < full.gold_length_bias < 0  # gold itself mildly prefers similar lengths
    first = full(tiny_encoder)
    assert set(first) == {
        "diag/alignment",
        "diag/uniformity",
        "diag/anisotropy",
        "diag/length_bias",
    }
    assert first == full(tiny_encoder)
    sampled = Diagnostics(data_dir=str(data_dir), num_sentences=200, seed=3)
    assert len(sampled.sample) == 200
    assert sampled.sample == Diagnostics(data_dir=str(data_dir), num_sentences=200, seed=3).sample
    assert sampled.sample != Diagnostics(data_dir=str(data_dir), num_sentences=200, seed=4).sample
    # a random tiny BERT (CLS) is nearly collapsed: all cosines close to 1
    assert first["diag/anisotropy"] > 0.9 and first["diag/uniformity"] > -0.5
