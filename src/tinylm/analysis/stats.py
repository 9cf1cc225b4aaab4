"""The statistics of a sweep, as thin wrappers over scipy: nothing here is hand-rolled.

A point's seeds give a mean and a sample standard deviation; a point is compared with the baseline
by Welch's t-test (unequal variances), whose 95% confidence interval is that of the difference of
means. "Significant" means p < 0.05, and only that: with 3 seeds a real effect of the size of the
seed noise is often not significant.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

ALPHA = 0.05  # significance level; the interval is the (1 - ALPHA) one


@dataclass
class Comparison:
    diff: float  # mean(point) - mean(baseline)
    low: float  # the 95% confidence interval of diff
    high: float
    p: float  # Welch's two-sided p-value

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; nan for a single value)."""
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan


def welch(point: list[float], baseline: list[float]) -> Comparison | None:
    """Welch's t-test of point against baseline (scipy.stats.ttest_ind, equal_var=False) and the 95%
    confidence interval of the difference of means; None with fewer than 2 values on a side."""
    if len(point) < 2 or len(baseline) < 2:
        return None
    from scipy import stats
    r = stats.ttest_ind(point, baseline, equal_var=False)
    ci = r.confidence_interval(1 - ALPHA)
    # no variance on either side (e.g. identical runs): scipy gives nan, which is never significant
    return Comparison(statistics.mean(point) - statistics.mean(baseline), float(ci.low), float(ci.high),
                      float(r.pvalue))
