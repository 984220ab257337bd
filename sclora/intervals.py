"""95 % confidence intervals over seeds, computed by scipy.stats: of a mean, and of a paired difference.

Seeds are the samples: a run is one draw of the data order and the adapter's random init. Two methods
run with the same seed see the same data order, so their difference is compared seed by seed (a paired
t interval, `scipy.stats.ttest_rel`), which removes the spread the seeds share.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from statistics import fmean
from typing import NamedTuple

from scipy import stats

CONFIDENCE = 0.95


class Interval(NamedTuple):
    """A mean with its 95 % interval over `n` seeds (NaN bounds below 2 seeds)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0  # False when the bounds are NaN


def mean_interval(values: Iterable[float]) -> Interval:
    """Student's t interval of the mean of `values` (NaN values are left out)."""
    kept = [float(v) for v in values if not math.isnan(v)]
    if not kept:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = fmean(kept)
    if len(kept) < 2:
        return Interval(mean, math.nan, math.nan, 1)
    if max(kept) == min(kept):  # no spread: scipy would warn about precision and return the same point
        return Interval(mean, mean, mean, len(kept))
    ci = stats.ttest_1samp(kept, 0.0).confidence_interval(CONFIDENCE)
    return Interval(mean, float(ci.low), float(ci.high), len(kept))


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float]) -> Interval:
    """`values` - `baseline` over the seeds both have (seed -> value; NaN left out): the paired t interval."""
    seeds = sorted(s for s in set(values) & set(baseline) if not (math.isnan(values[s]) or math.isnan(baseline[s])))
    differences = [values[s] - baseline[s] for s in seeds]
    if len(seeds) < 2 or max(differences) == min(differences):
        return mean_interval(differences)
    ci = stats.ttest_rel([values[s] for s in seeds], [baseline[s] for s in seeds]).confidence_interval(CONFIDENCE)
    return Interval(fmean(differences), float(ci.low), float(ci.high), len(seeds))
