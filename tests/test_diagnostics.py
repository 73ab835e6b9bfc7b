"""Diagnostics: each pure function against values worked by hand or with numpy, then the
encoder-level class for determinism and its keys."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from csetrain.config import ConfigError
from csetrain.eval.diagnostics import (
    Diagnostics,
    anisotropy,
    effective_negatives,
    length_bias,
)
from csetrain.eval.sts import PairSet, STSEvaluator
from csetrain.losses import alignment, uniformity


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
    full = Diagnostics.on_stsb_dev(data_dir=str(data_dir))
    assert full.positive.sum() == 264  # STS-B dev pairs with gold >= 4.0 (56 of them at 4.0)
    assert -1 < full.gold_length_bias < 0  # gold itself mildly prefers similar lengths
    first = full(tiny_encoder)
    assert set(first) == {
        "diagnostics/alignment",
        "diagnostics/uniformity",
        "diagnostics/anisotropy",
        "diagnostics/length_bias",
    }
    assert first == full(tiny_encoder)
    sampled = Diagnostics.on_stsb_dev(data_dir=str(data_dir), num_sentences=200, seed=3)
    assert len(sampled.sample) == 200
    again = Diagnostics.on_stsb_dev(data_dir=str(data_dir), num_sentences=200, seed=3)
    assert sampled.sample == again.sample
    other = Diagnostics.on_stsb_dev(data_dir=str(data_dir), num_sentences=200, seed=4)
    assert sampled.sample != other.sample
    # a random tiny BERT (CLS) is nearly collapsed: all cosines close to 1
    assert first["diagnostics/anisotropy"] > 0.9 and first["diagnostics/uniformity"] > -0.5


def test_measure_reads_each_sentence_from_its_row():
    pairs = PairSet("toy", ["a", "b c", "a"], ["d e f", "a", "b c"], np.array([5.0, 4.0, 1.0]))
    vectors = {"a": [1.0, 0.0], "b c": [0.0, 2.0], "d e f": [-1.0, 0.0]}
    order = ["d e f", "unused", "b c", "a"]  # any order, extra rows allowed
    table = torch.tensor([vectors.get(s, [9.0, 9.0]) for s in order])
    got = Diagnostics(pairs).measure(order, table)
    # positives (gold >= 4): a~d e f (antipodal, squared distance 4) and b c~a (orthogonal, 2)
    assert got["diagnostics/alignment"] == pytest.approx(3.0)
    # distinct sentences a, b c, d e f: cosines 0, -1, 0 -> mean -1/3
    assert got["diagnostics/anisotropy"] == pytest.approx(-1 / 3)
    assert got["diagnostics/uniformity"] == pytest.approx(
        math.log((2 * math.exp(-4) + math.exp(-8)) / 3)
    )
    cosines = [-1.0, 0.0, 0.0]  # word gaps 2, 1, 1
    assert got["diagnostics/length_bias"] == pytest.approx(spearmanr([2, 1, 1], cosines).statistic)


def test_no_positive_pair_is_a_config_error():
    pairs = PairSet("low", ["a"], ["b"], np.array([1.0]))
    with pytest.raises(ConfigError, match="positive_threshold"):
        Diagnostics(pairs)


class CountingEncoder:
    """Counts encode calls of a wrapped encoder."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, 0

    def encode(self, *args, **kwargs):
        self.calls += 1
        return self.encoder.encode(*args, **kwargs)


def test_dev_evaluator_reports_diagnostics_from_its_own_vectors(data_dir, tiny_encoder):
    with_diagnostics = STSEvaluator(["stsb"], "dev", data_dir=str(data_dir), diagnostics=True)
    counting = CountingEncoder(tiny_encoder)
    result = with_diagnostics(counting)
    assert counting.calls == 1  # no second encoding pass
    direct = Diagnostics.on_stsb_dev(data_dir=str(data_dir))(tiny_encoder)
    for key, value in direct.items():
        assert result.metrics[key] == pytest.approx(value, abs=1e-6)
    plain = STSEvaluator(["stsb"], "dev", data_dir=str(data_dir))(tiny_encoder)
    assert not any(k.startswith("diagnostics/") for k in plain.metrics)
    assert plain.metrics == {k: v for k, v in result.metrics.items() if k in plain.metrics}


def test_every_dev_evaluation_logs_diagnostics_and_steps_log_effective_negatives(tmp_path):
    from .test_train import _run_tiny

    tracker, components = _run_tiny(
        tmp_path, ["trainer.eval_every=2", "trainer.lr=5e-3", "trainer.log_every=2"]
    )
    evals = [(step, m) for step, m in tracker.metrics if "eval/diagnostics/alignment" in m]
    assert [step for step, _ in evals] == [0, 2, 4, 5]
    assert evals[0][1]["eval/diagnostics/alignment"] != evals[-1][1]["eval/diagnostics/alignment"]
    final = components.evaluator.diagnostics(components.encoder)  # the model after step 5
    for key, value in final.items():
        assert evals[-1][1][f"eval/{key}"] == pytest.approx(value, abs=1e-6)
    steps = [step for step, m in tracker.metrics if "train/effective_negatives" in m]
    assert steps == [2, 4, 5]  # the logging cadence (and the last step), not every step
    batch = 8  # in-batch negatives: 7 per anchor at most
    assert all(1 <= v <= batch - 1 for v in tracker.series("train/effective_negatives"))


def test_infonce_objective_reports_effective_negatives_of_its_logits():
    from csetrain.objectives.simcse_unsup import SimCSEUnsup

    g = torch.Generator().manual_seed(0)
    anchors, positives = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    out = SimCSEUnsup(temperature=0.1).loss({"anchor": anchors, "positive": positives}, None)
    cos = (
        torch.nn.functional.normalize(anchors, dim=-1)
        @ torch.nn.functional.normalize(positives, dim=-1).T
    )
    by_hand = []
    for i in range(4):
        weights = torch.softmax(torch.cat([cos[i, :i], cos[i, i + 1 :]]) / 0.1, dim=0)
        by_hand.append(math.exp(-(weights * weights.log()).sum().item()))
    assert out.metrics["effective_negatives"].item() == pytest.approx(np.mean(by_hand), rel=1e-5)
