"""Statistics for campaign results (scipy). Pure functions returning frozen records.

- `summarize(values, order=None)`: n, median, mean, std, CV, a bootstrap confidence interval of the median
  (`scipy.stats.bootstrap`, percentile method, `N_RESAMPLES` = 2000 resamples, seed `SEED` = 0, so the same data
  always gives the same interval), a warm-up sufficiency check and warnings (CV > 10 %, warm-up, drift).
- `check_warmup(values, order)`: do the first timed steps differ from the last? Mann-Whitney U between the first
  quarter and the second half (by step index), the ratio of their medians, and a `linregress` slope for the report.
- `median_ci(values)`: distribution-free CI of a median from order statistics (binomial), for tables of layers.
- `ratio_ci(a, b)`: bootstrap CI of median(a) / median(b), each side resampled independently (seeded).
- `compare(a, b, alpha=0.05, min_ratio=1.05)`: asv-style: b is called faster/slower than a only when Mann-Whitney U
  is significant AND the ratio of medians is at least `min_ratio`; otherwise "same". Lower values are better (times).
- `slowdown(baseline, candidate, max_ratio=1.05, alpha=0.05)`: `compare` as a regression gate reads it: the ratio
  median(candidate) / median(baseline) with its `ratio_ci`, and a regression when the candidate is significantly
  slower by at least `max_ratio`; says when the sample sizes are too small for any difference to be significant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
from scipy import stats as _st

N_RESAMPLES = 2000  # bootstrap resamples: the CI bounds move < 1 % between seeds at n >= 20
SEED = 0
CONFIDENCE = 0.95
CV_WARN = 0.10  # coefficient of variation above which a cell is flagged unstable
WARMUP_ALPHA = 0.01
WARMUP_TOLERANCE = 0.05  # first steps may be this much slower than the last before warm-up is called short
MIN_GROUP = 4  # samples needed in each of the compared groups

_Samples = Sequence[float] | np.ndarray  # what the functions below take: any 1-D run of numbers


@dataclass(frozen=True)
class WarmupCheck:
    """`trend`: "warming" (first steps slower: warm-up too short), "slowing" (later steps slower: throttling),
    "flat" or "unknown" (too few steps). `ratio` = median(first quarter) / median(second half) of the steps."""

    trend: str
    ratio: float
    p_value: float
    slope_per_step: float  # linregress slope relative to the median (0.01 = +1 % per step)
    slope_p: float
    reason: str

    @property
    def sufficient(self) -> bool | None:
        """False when the warm-up was too short; None when there is too little data to tell."""
        return None if self.trend == "unknown" else self.trend != "warming"


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    mean: float
    std: float  # sample standard deviation (ddof=1)
    cv: float  # std / mean
    ci_low: float  # bootstrap CI of the median
    ci_high: float
    confidence: float
    n_resamples: int
    warmup: WarmupCheck
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Comparison:
    """`ratio` = median(a) / median(b): > 1 means b is faster (takes less)."""

    baseline_median: float
    candidate_median: float
    ratio: float
    p_value: float
    alpha: float
    min_ratio: float
    significant: bool
    verdict: str  # "faster" | "slower" | "same"
    reason: str


@dataclass(frozen=True)
class Slowdown:
    """The candidate against the baseline as a regression gate reads it (lower is better: times, energy).
    `ratio` = median(candidate) / median(baseline) (> 1: the candidate is slower), `ci_low`/`ci_high` its bootstrap
    CI; `regression`: Mann-Whitney U significant (p < alpha) AND ratio >= max_ratio; `min_p`: the smallest p-value
    samples of these sizes can give (>= alpha: no difference could show)."""

    baseline_median: float
    candidate_median: float
    ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    min_p: float
    alpha: float
    max_ratio: float
    n_baseline: int
    n_candidate: int
    significant: bool
    regression: bool
    verdict: str  # "slower" | "faster" | "same" (compare's, from the candidate's side)
    reason: str

    @property
    def underpowered(self) -> bool:
        return not self.min_p < self.alpha


def _clean(values: _Samples) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return cast(np.ndarray, x[np.isfinite(x)])


def check_warmup(
    values: _Samples,
    order: Sequence[float] | None = None,
    *,
    alpha: float = WARMUP_ALPHA,
    tolerance: float = WARMUP_TOLERANCE,
) -> WarmupCheck:
    """Compare the first quarter of the timed steps with the second half (by `order`, which defaults to the position;
    pass the step index within a repetition to pool repetitions). Warming: significant (p < alpha) and the first
    steps more than `tolerance` slower."""
    x = np.asarray(values, dtype=float).ravel()
    o = np.arange(len(x), dtype=float) if order is None else np.asarray(order, dtype=float).ravel()
    if len(o) != len(x):
        raise ValueError("values and order differ in length")
    keep = np.isfinite(x) & np.isfinite(o)
    x, o = x[keep], o[keep]
    nan = float("nan")
    steps = np.unique(o)
    if len(steps) < 2:
        return WarmupCheck("unknown", nan, nan, nan, nan, "one step index only")
    first = x[o < steps[max(1, len(steps) // 4)]]  # first quarter of the step indices (at least one index)
    second = x[o >= steps[len(steps) // 2]]  # second half
    if len(first) < MIN_GROUP or len(second) < MIN_GROUP:
        return WarmupCheck("unknown", nan, nan, nan, nan, f"fewer than {MIN_GROUP} steps to compare")
    ratio = float(np.median(first) / np.median(second)) if np.median(second) > 0 else nan
    p = float(_st.mannwhitneyu(first, second, alternative="two-sided").pvalue) if np.ptp(x) > 0 else 1.0
    if np.ptp(o) > 0 and np.ptp(x) > 0:
        lr = _st.linregress(o, x)
        slope, slope_p = float(lr.slope / np.median(x)), float(lr.pvalue)
    else:
        slope, slope_p = 0.0, 1.0
    if p < alpha and ratio > 1 + tolerance:
        return WarmupCheck(
            "warming",
            ratio,
            p,
            slope,
            slope_p,
            f"first timed steps {ratio:.2f}x slower than the last (p={p:.2g}): raise warmup",
        )
    if p < alpha and ratio < 1 - tolerance:
        return WarmupCheck(
            "slowing",
            ratio,
            p,
            slope,
            slope_p,
            f"steps get slower over the run ({1 / ratio:.2f}x, p={p:.2g}): throttling?",
        )
    return WarmupCheck("flat", ratio, p, slope, slope_p, "no warm-up effect")


def summarize(
    values: _Samples,
    order: Sequence[float] | None = None,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Summary:
    """Describe one cell's timed samples (non-finite values are dropped). `order`: see `check_warmup`."""
    raw = np.asarray(values, dtype=float).ravel()
    warm = check_warmup(raw, order)
    x = _clean(raw)
    n = len(x)
    nan = float("nan")
    if n == 0:
        return Summary(0, nan, nan, nan, nan, nan, nan, confidence, n_resamples, warm, ("no samples",))
    median, mean = float(np.median(x)), float(np.mean(x))
    std = float(np.std(x, ddof=1)) if n > 1 else nan
    cv = std / mean if n > 1 and mean != 0 else nan
    if n < 2:
        lo = hi = nan
    elif np.ptp(x) == 0:
        lo = hi = median
    else:
        ci = _st.bootstrap(
            (x,),
            np.median,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        ).confidence_interval
        lo, hi = float(ci.low), float(ci.high)
    warnings = []
    if n < 2:
        warnings.append("fewer than 2 samples: no spread or interval")
    if math.isfinite(cv) and cv > CV_WARN:
        warnings.append(f"unstable: CV {cv:.0%} > {CV_WARN:.0%}")
    if warm.trend in ("warming", "slowing"):
        warnings.append(warm.reason)
    return Summary(n, median, mean, std, cv, lo, hi, confidence, n_resamples, warm, tuple(warnings))


def median_ci(values: _Samples, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(median, low, high): distribution-free CI of the median from order statistics (binomial, p = 1/2).
    With too few samples for the confidence (n < 6 at 95 %) the interval is [min, max] (lower coverage)."""
    x = np.sort(np.asarray(values, dtype=float))
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan
    med = float(np.median(x))
    lo_rank = int(_st.binom.ppf((1 - confidence) / 2, n, 0.5))  # 1-based rank of the lower bound (may be 0)
    if lo_rank < 1:
        return med, float(x[0]), float(x[-1])
    return med, float(x[lo_rank - 1]), float(x[n - lo_rank])


def ratio_ci(
    a: _Samples,
    b: _Samples,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile bootstrap CI of median(a) / median(b), resampling each side independently (seeded); (nan, nan)
    with fewer than 2 finite samples on a side."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    out = []
    chunk = max(1, min(n_resamples, 2_000_000 // max(len(a), len(b))))  # bounded memory per batch of resamples
    done = 0
    while done < n_resamples:
        k = min(chunk, n_resamples - done)
        ma = np.median(a[rng.integers(0, len(a), (k, len(a)))], axis=1)
        mb = np.median(b[rng.integers(0, len(b), (k, len(b)))], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(ma / mb)
        done += k
    r = np.concatenate(out)
    r = r[np.isfinite(r)]
    if not len(r):
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(r, [tail, 100 - tail])
    return float(lo), float(hi)


def compare(a: _Samples, b: _Samples, alpha: float = 0.05, min_ratio: float = 1.05) -> Comparison:
    """Is b (candidate) faster or slower than a (baseline)? Both Mann-Whitney U (two-sided, p < alpha) and a ratio of
    medians of at least `min_ratio` (either way) are required to claim a difference."""
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if not min_ratio >= 1:
        raise ValueError("min_ratio must be >= 1")
    x, y = _clean(a), _clean(b)
    if len(x) == 0 or len(y) == 0:
        raise ValueError("compare needs samples on both sides")
    ma, mb = float(np.median(x)), float(np.median(y))
    ratio = ma / mb if mb > 0 else float("inf") if ma > 0 else 1.0
    if np.ptp(np.concatenate([x, y])) == 0:
        p = 1.0
    else:
        p = float(_st.mannwhitneyu(x, y, alternative="two-sided").pvalue)
    significant = p < alpha
    if significant and ratio >= min_ratio:
        verdict, reason = "faster", f"{ratio:.3g}x faster (p={p:.2g})"
    elif significant and ratio <= 1 / min_ratio:
        verdict, reason = "slower", f"{1 / ratio:.3g}x slower (p={p:.2g})"
    elif significant:
        verdict, reason = "same", f"significant (p={p:.2g}) but ratio {ratio:.3g} within min_ratio {min_ratio:g}"
    else:
        verdict, reason = "same", f"not significant (p={p:.2g} >= {alpha:g})"
    return Comparison(ma, mb, ratio, p, alpha, min_ratio, significant, verdict, reason)


def slowdown(
    baseline: _Samples,
    candidate: _Samples,
    *,
    max_ratio: float = 1.05,
    alpha: float = 0.05,
    confidence: float = CONFIDENCE,
) -> Slowdown:
    """Is the candidate slower than the baseline by at least `max_ratio`? `compare` decides (Mann-Whitney U and the
    ratio of medians, asv-style); `ratio_ci` gives the CI of median(candidate) / median(baseline)."""
    c = compare(baseline, candidate, alpha=alpha, min_ratio=max_ratio)
    x, y = _clean(baseline), _clean(candidate)
    ma, mb = c.baseline_median, c.candidate_median
    ratio = mb / ma if ma > 0 else float("inf") if mb > 0 else 1.0
    lo, hi = ratio_ci(y, x, confidence=confidence)
    # the p-value of two fully separated samples of these sizes: the smallest Mann-Whitney U can give
    min_p = float(_st.mannwhitneyu(np.arange(len(x)), np.arange(len(x), len(x) + len(y))).pvalue)
    regression = c.verdict == "slower"
    if not min_p < alpha:
        reason = f"too few samples ({len(x)} and {len(y)}) for any difference to be significant at alpha {alpha:g}"
    elif regression:
        reason = f"{ratio:.3g}x slower (p={c.p_value:.2g}): a regression (limit {max_ratio:.3g}x)"
    elif c.verdict == "faster":
        reason = f"{1 / ratio:.3g}x faster (p={c.p_value:.2g})"
    else:
        reason = c.reason
    return Slowdown(
        baseline_median=ma,
        candidate_median=mb,
        ratio=ratio,
        ci_low=lo,
        ci_high=hi,
        p_value=c.p_value,
        min_p=min_p,
        alpha=alpha,
        max_ratio=max_ratio,
        n_baseline=len(x),
        n_candidate=len(y),
        significant=c.significant,
        regression=regression,
        verdict=c.verdict,
        reason=reason,
    )


__all__ = [
    "CONFIDENCE",
    "CV_WARN",
    "Comparison",
    "Slowdown",
    "N_RESAMPLES",
    "SEED",
    "Summary",
    "WarmupCheck",
    "check_warmup",
    "compare",
    "median_ci",
    "ratio_ci",
    "slowdown",
    "summarize",
]
