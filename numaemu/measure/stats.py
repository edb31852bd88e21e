"""Statistics for repeated measurements (pure logic; scipy does the numerics).

What numaemu reports for a figure measured N times, in the manner of pyperf (median +- MAD,
a significance test in ``compare_to``):

- `summarise`: median, median absolute deviation, min, max, and a bootstrap 95% confidence
  interval of the median (percentile method: with the 3-10 repetitions a benchmark affords, BCa's
  acceleration estimate is unstable, and percentile intervals never leave the data's range).
- `paired_test`: is a speedup different from 1? Each repetition runs every policy back to back,
  so a repetition's speedup is a *paired* ratio and host drift between repetitions cancels.
  A one-sample t-test on log ratios (ratios are multiplicative; the log makes 0.9 and 1/0.9
  symmetric). A Wilcoxon signed-rank test cannot reach p < 0.05 two-sided below 6 pairs, which is
  why it is not used here.
- `welch_test`: are two independent sets of figures (two result files) different? Welch's t-test
  on logs, which does not assume equal variances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Summary", "Test", "summarise", "paired_test", "welch_test", "ALPHA", "CONFIDENCE"]

ALPHA = 0.05
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 4999


def _scipy_stats() -> Any:  # scipy ships no type information
    """scipy.stats, imported when first needed: it takes over a second to import on a small host,
    which every ``bench --cluster`` task's fresh process (runner) would pay for nothing."""
    from scipy import stats

    return stats


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    mad: float  # median absolute deviation (unscaled)
    min: float
    max: float
    ci_low: float | None  # bootstrap 95% CI of the median; None below 2 samples
    ci_high: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def contains(self, value: float) -> bool:
        """Whether `value` lies in the confidence interval (or equals the only sample)."""
        if self.ci_low is None or self.ci_high is None:
            return math.isclose(value, self.median, rel_tol=1e-12)
        return self.ci_low <= value <= self.ci_high

    @property
    def ci_half_width_pct(self) -> float | None:
        if self.ci_low is None or self.ci_high is None or not self.median:
            return None
        return 100.0 * (self.ci_high - self.ci_low) / 2 / abs(self.median)


@dataclass(frozen=True)
class Test:
    name: str
    p_value: float | None  # None: too few samples, or no variation to test against
    significant: bool
    n: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _clean(values: Sequence[float]) -> np.ndarray:
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite")
    return x


def summarise(values: Sequence[float], seed: int = 0) -> Summary:
    x = _clean(values)
    if len(x) == 0:
        raise ValueError("no values to summarise")
    med = float(np.median(x))
    sps = _scipy_stats()
    mad = float(sps.median_abs_deviation(x))
    lo = hi = None
    if len(x) >= 2:
        if np.ptp(x) == 0:  # bootstrap on constant data is degenerate: the interval is the value
            lo = hi = med
        else:
            res = sps.bootstrap(
                (x,), np.median, confidence_level=CONFIDENCE, method="percentile",
                n_resamples=BOOTSTRAP_RESAMPLES, rng=np.random.default_rng(seed),
            )
            # A percentile interval of the median lies within the data; clamp away the last-bit
            # rounding of the interpolated percentiles.
            lo = min(max(float(res.confidence_interval.low), float(x.min())), med)
            hi = max(min(float(res.confidence_interval.high), float(x.max())), med)
    return Summary(len(x), med, mad, float(x.min()), float(x.max()), lo, hi)


def _t_test(name: str, result_p: float, n: int) -> Test:
    p = float(result_p)
    if not math.isfinite(p):
        return Test(name, None, False, n)
    return Test(name, p, p < ALPHA, n)


def paired_test(ratios: Sequence[float]) -> Test:
    """Two-sided one-sample t-test of log(ratio) against 0: is the paired ratio different from 1?"""
    x = _clean(ratios)
    if len(x) < 2 or np.any(x <= 0):
        return Test("paired t-test on log ratios", None, False, len(x))
    logs = np.log(x)
    if np.ptp(logs) == 0:  # no spread: t is infinite, or undefined when exactly 1
        same = bool(np.all(logs == 0))
        return Test("paired t-test on log ratios", 1.0 if same else 0.0, not same, len(x))
    return _t_test("paired t-test on log ratios", _scipy_stats().ttest_1samp(logs, 0.0).pvalue, len(x))


def welch_test(a: Sequence[float], b: Sequence[float]) -> Test:
    """Two-sided Welch t-test on logs: do two independent samples of a positive figure differ?"""
    x, y = _clean(a), _clean(b)
    n = min(len(x), len(y))
    if n < 2 or np.any(x <= 0) or np.any(y <= 0):
        return Test("Welch t-test on logs", None, False, n)
    lx, ly = np.log(x), np.log(y)
    if np.ptp(lx) == 0 and np.ptp(ly) == 0:
        same = bool(lx[0] == ly[0])
        return Test("Welch t-test on logs", 1.0 if same else 0.0, not same, n)
    return _t_test("Welch t-test on logs", _scipy_stats().ttest_ind(lx, ly, equal_var=False).pvalue, n)
