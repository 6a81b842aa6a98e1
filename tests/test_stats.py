"""Statistics on synthetic data with known answers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from autlearn.profiler.stats import CV_WARN, N_RESAMPLES, check_warmup, compare, median_ci, ratio_ci, summarize


def rng(seed=1):
    return np.random.default_rng(seed)


def test_summary_of_known_distribution():
    x = rng().normal(100.0, 2.0, 200)
    s = summarize(x)
    assert s.n == 200 and s.n_resamples == N_RESAMPLES and s.confidence == 0.95
    assert abs(s.median - 100) < 0.6 and abs(s.mean - 100) < 0.5 and 1.7 < s.std < 2.3
    assert s.ci_low < s.median < s.ci_high and s.ci_high - s.ci_low < 1.5
    assert s.ci_low < 100 < s.ci_high
    assert s.warnings == () and s.warmup.trend == "flat"


def test_bootstrap_is_deterministic_and_frozen():
    x = rng(7).lognormal(0, 0.3, 50)
    a, b = summarize(x), summarize(x)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.median = 0


def test_cv_warning():
    assert any("CV" in w for w in summarize(rng().normal(100, 20, 100)).warnings)
    assert not summarize(rng().normal(100, 100 * CV_WARN / 2, 100)).warnings


def test_degenerate_inputs():
    s = summarize([5.0] * 10)
    assert (s.median, s.std, s.ci_low, s.ci_high, s.cv) == (5.0, 0.0, 5.0, 5.0, 0.0)
    one = summarize([3.0])
    assert one.n == 1 and math.isnan(one.ci_low) and one.warnings
    none = summarize([float("nan")])
    assert none.n == 0 and "no samples" in none.warnings


def test_warmup_too_short_is_detected():
    r = rng(3)
    steps = np.arange(40)
    x = np.where(steps < 8, 150 - 6 * steps, 100) + r.normal(0, 1, 40)
    w = check_warmup(x)
    assert w.trend == "warming" and w.sufficient is False and w.ratio > 1.05 and w.slope_per_step < 0
    assert any("warmup" in m for m in summarize(x).warnings)


def test_warmup_pooled_over_repetitions_by_step_index():
    r = rng(4)
    reps = [np.r_[130, 115, 105, r.normal(100, 1, 9)] for _ in range(3)]
    order = np.tile(np.arange(12), 3)
    assert check_warmup(np.concatenate(reps), order).trend == "warming"
    flat = np.concatenate([r.normal(100, 1, 12) for _ in range(3)])
    assert check_warmup(flat, order).sufficient is True


def test_throttling_drift_is_reported():
    x = np.linspace(100, 130, 40) + rng(5).normal(0, 1, 40)
    w = check_warmup(x)
    assert w.trend == "slowing" and w.sufficient is True
    assert any("slower over the run" in m for m in summarize(x).warnings)


def test_warmup_unknown_with_few_steps():
    assert check_warmup([1, 2, 3]).sufficient is None


def test_ten_percent_speedup_is_detected():
    r = rng(11)
    base, fast = r.normal(100, 3, 30), r.normal(100 / 1.10, 3, 30)
    c = compare(base, fast)
    assert c.verdict == "faster" and c.significant and 1.06 < c.ratio < 1.14
    assert compare(fast, base).verdict == "slower"


def test_one_percent_shift_is_not_claimed_even_when_significant():
    r = rng(12)
    base, cand = r.normal(100, 0.5, 2000), r.normal(99, 0.5, 2000)
    c = compare(base, cand, min_ratio=1.05)
    assert c.significant and c.p_value < 1e-10  # statistically real ...
    assert c.verdict == "same" and "min_ratio" in c.reason  # ... but below the minimum ratio
    assert compare(base, cand, min_ratio=1.0).verdict == "faster"


def test_large_ratio_without_significance_is_not_claimed():
    c = compare([100, 140, 60], [80, 120, 50])  # 3 vs 3 samples: Mann-Whitney cannot reach p < 0.05
    assert c.ratio > 1.05 and not c.significant and c.verdict == "same"


def test_identical_samples_and_argument_checks():
    assert compare([1.0] * 5, [1.0] * 5).verdict == "same"
    with pytest.raises(ValueError):
        compare([], [1.0])
    with pytest.raises(ValueError):
        compare([1.0], [1.0], min_ratio=0.9)
    with pytest.raises(ValueError):
        compare([1.0], [1.0], alpha=1.5)


@pytest.mark.parametrize("seed", range(5))
def test_false_claims_are_rare_on_identical_distributions(seed):
    r = rng(100 + seed)
    assert compare(r.normal(100, 5, 40), r.normal(100, 5, 40)).verdict == "same"


def test_ratio_ci_is_seeded_and_brackets_the_ratio():
    a, b = rng(2).normal(200.0, 4.0, 60), rng(3).normal(100.0, 2.0, 60)
    lo, hi = ratio_ci(a, b)
    assert (lo, hi) == ratio_ci(a, b)  # same data, same interval
    assert lo < np.median(a) / np.median(b) < hi and 1.9 < lo < hi < 2.1
    assert all(math.isnan(v) for v in ratio_ci([1.0], b))  # one sample: no interval


def test_median_ci_lives_in_stats():
    med, lo, hi = median_ci(list(range(1, 21)))
    assert med == 10.5 and lo < med < hi
