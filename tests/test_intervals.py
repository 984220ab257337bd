"""Confidence intervals over seeds: hand-made numbers against the t formula."""

import math
import statistics

import pytest
from scipy import stats

from sclora.intervals import mean_interval, paired_difference


def t_interval(values):
    """The textbook 95 % t interval: mean +- t_{0.975, n-1} s / sqrt(n)."""
    n, mean = len(values), statistics.fmean(values)
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half


def test_mean_interval_is_the_t_interval():
    values = [0.61, 0.55, 0.70, 0.58, 0.66]
    got = mean_interval(values)
    low, high = t_interval(values)
    assert got.n == 5 and got.mean == pytest.approx(statistics.fmean(values))
    assert (got.low, got.high) == (pytest.approx(low), pytest.approx(high))
    assert got.excludes_zero
    assert mean_interval([0.2, math.nan, 0.4]).n == 2  # NaN (a metric a run lacks) is left out


def test_one_seed_has_no_interval_and_no_spread_has_a_point():
    one = mean_interval([0.3])
    assert one.mean == 0.3 and math.isnan(one.low) and math.isnan(one.high) and not one.excludes_zero
    flat = mean_interval([1.0, 1.0, 1.0])
    assert (flat.low, flat.high) == (1.0, 1.0)
    assert mean_interval([]).n == 0


def test_paired_difference_pairs_by_seed():
    method = {0: 0.80, 1: 0.72, 2: 0.91, 3: 0.65}
    lora = {0: 0.70, 1: 0.69, 2: 0.80, 4: 0.10}  # seed 3 and 4 have no partner: left out
    got = paired_difference(method, lora)
    differences = [0.10, 0.03, 0.11]
    low, high = t_interval(differences)
    assert got.n == 3 and got.mean == pytest.approx(statistics.fmean(differences))
    assert (got.low, got.high) == (pytest.approx(low), pytest.approx(high))
    # Paired, the shared seed spread cancels: the same numbers unpaired give a wider interval.
    unpaired = stats.ttest_ind([0.80, 0.72, 0.91], [0.70, 0.69, 0.80]).confidence_interval(0.95)
    assert high - low < unpaired.high - unpaired.low
    assert not paired_difference({0: 0.5, 1: 0.7}, {0: 0.6, 1: 0.5}).excludes_zero
