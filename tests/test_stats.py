"""Bootstrap statistics (csetrain/stats.py) against scipy and hand-computed values."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from csetrain.stats import (
    paired_bootstrap,
    percentile_interval,
    resample_counts,
    resampled_spearman,
    seed_and_pair_bootstrap,
    seed_bootstrap,
    spearman,
    two_sided_p,
)


def _task(n, noise, seed):
    """Gold scores on SentEval's 0–5 grid (many ties) and cosines = gold + noise, rounded so
    the predictions tie too."""
    rng = np.random.default_rng(seed)
    gold = np.round(rng.uniform(0, 5, n) * 5) / 5
    return gold, np.round(gold + rng.normal(0, noise, n), 1)


def test_resampled_spearman_is_scipys_spearman_of_the_expanded_resample():
    gold, pred = _task(200, 1.5, 0)
    scores = resampled_spearman([pred], gold, 6, np.random.default_rng(7))
    counts = resample_counts(np.random.default_rng(7), 200, 6)  # the same draws
    assert (counts.sum(axis=1) == 200).all()
    for row, draw in zip(scores[0], counts):
        index = np.repeat(np.arange(200), draw)
        assert row == pytest.approx(100 * spearmanr(pred[index], gold[index]).statistic, abs=1e-9)


def test_point_spearman_is_scipys():
    gold, pred = _task(500, 1.0, 1)
    assert spearman(pred, gold) == pytest.approx(100 * spearmanr(pred, gold).statistic, abs=1e-9)


def test_identical_or_monotone_equivalent_runs_give_zero_delta_and_p_one():
    tasks = {f"t{i}": _task(300, 1.0, i) for i in range(3)}
    gold = {t: g for t, (g, _) in tasks.items()}
    a = {t: p for t, (_, p) in tasks.items()}
    b = {t: np.exp(p) for t, p in a.items()}  # same order, so the same Spearman on any resample
    for other in (a, b):
        results = paired_bootstrap(a, other, gold, resamples=200, seed=0)
        assert set(results) == {"t0", "t1", "t2", "avg"}
        for r in results.values():
            assert (r.delta, r.low, r.high, r.p_value) == (0, 0, 0, 1)


def test_perfect_run_against_a_noisy_one():
    gold, noisy = _task(400, 1.5, 2)
    results = paired_bootstrap({"t": noisy}, {"t": gold + 1.0}, {"t": gold}, resamples=500, seed=0)
    r = results["t"]
    assert "avg" not in results  # one task: no average
    assert r.b == pytest.approx(100)
    assert r.a == pytest.approx(100 * spearmanr(noisy, gold).statistic)
    assert r.delta == pytest.approx(100 - r.a)
    assert 0 < r.low < r.delta < r.high
    assert r.p_value == pytest.approx(2 / 501)  # B beats A on every resample


def test_average_is_the_mean_of_the_tasks():
    tasks = {f"t{i}": _task(150 + 50 * i, 0.5 + i, i) for i in range(3)}
    gold = {t: g for t, (g, _) in tasks.items()}
    a = {t: p for t, (_, p) in tasks.items()}
    b = {t: g + np.random.default_rng(9).normal(0, 1.0, len(g)) for t, g in gold.items()}
    results = paired_bootstrap(a, b, gold, resamples=300, seed=4)
    assert results["avg"].a == pytest.approx(np.mean([results[t].a for t in gold]))
    assert results["avg"].delta == pytest.approx(np.mean([results[t].delta for t in gold]))


def test_bootstrap_is_seeded():
    gold, pred = _task(300, 1.0, 3)
    other = gold + np.random.default_rng(5).normal(0, 1.2, 300)
    runs = [
        paired_bootstrap({"t": pred}, {"t": other}, {"t": gold}, 200, s)["t"] for s in (1, 1, 2)
    ]
    assert runs[0] == runs[1] and runs[0].low != runs[2].low


def test_percentile_interval():
    assert percentile_interval(np.full(1000, 3.25)) == (3.25, 3.25)
    assert percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    assert percentile_interval(np.arange(101.0), level=0.5) == pytest.approx((25, 75))


def test_two_sided_p_by_hand():
    # 1 of 4 resamples <= 0, 3 of 4 >= 0: p = 2 * min(2/5, 4/5)
    assert two_sided_p(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(0.8)
    assert two_sided_p(np.zeros(10)) == 1.0
    assert two_sided_p(np.ones(99)) == pytest.approx(2 / 100)


def test_seed_bootstrap_by_hand():
    s = seed_bootstrap(np.array([70.0, 72.0, 74.0]), resamples=2000, seed=0)
    assert (s.n, s.mean, s.std, s.method) == (3, 72.0, 2.0, "seeds")
    assert 70 <= s.low < 72 < s.high <= 74
    # two seeds: resampled means are 0, 5, 10 with probabilities 1/4, 1/2, 1/4
    two = seed_bootstrap(np.array([0.0, 10.0]), resamples=4000, seed=0)
    assert (two.low, two.high) == (0.0, 10.0)
    constant = seed_bootstrap(np.array([5.0, 5.0, 5.0]), resamples=100)
    assert (constant.std, constant.low, constant.high) == (0.0, 5.0, 5.0)


def test_seed_and_pair_bootstrap():
    gold = {f"t{i}": _task(250, 1.0, i)[0] for i in range(2)}
    sims = [
        {
            t: g + np.random.default_rng(10 * s + i).normal(0, 1.0, len(g))
            for i, (t, g) in enumerate(gold.items())
        }
        for s in range(3)
    ]
    out = seed_and_pair_bootstrap(sims, gold, resamples=400, seed=0)
    assert set(out) == {"t0", "t1", "avg"}
    for task in gold:
        per_seed = [100 * spearmanr(s[task], gold[task]).statistic for s in sims]
        assert out[task].mean == pytest.approx(np.mean(per_seed))
        assert out[task].std == pytest.approx(np.std(per_seed, ddof=1))
        assert out[task].low < out[task].mean < out[task].high
        assert out[task].method == "seeds+pairs" and out[task].n == 3
    assert out["avg"].mean == pytest.approx((out["t0"].mean + out["t1"].mean) / 2)
    # identical seeds: no seed spread, but the test pairs still leave an interval
    same = seed_and_pair_bootstrap([sims[0]] * 3, gold, resamples=400, seed=0)["t0"]
    assert same.std == 0 and same.low < same.mean < same.high
