"""Intervals of sclora.analysis.intervals: runs alone are the paired t interval; seeds x items is the crossed design's
variance; no spread at a bound is the exact interval, never zero width; bounds stay within the range."""

import math
import statistics

import numpy as np
import pytest
from scipy import stats

from sclora.analysis.intervals import crossed_variance, difference, mean


def as_runs(values, build="0"):
    """seed -> value (runs without per-item scores) or seed -> [item scores]."""
    return {(build, seed): ({"": v} if np.isscalar(v) else {f"i{i}": float(x) for i, x in enumerate(v)})
            for seed, v in values.items()}  # fmt: skip


def test_runs_alone_give_the_paired_t_interval():
    method = {0: 0.80, 1: 0.72, 2: 0.91, 3: 0.65}
    lora = {0: 0.70, 1: 0.69, 2: 0.80, 4: 0.10}  # seeds 3 and 4 have no partner: left out
    got = difference(as_runs(method), as_runs(lora)).interval(0.95)
    expected = stats.ttest_rel([0.80, 0.72, 0.91], [0.70, 0.69, 0.80]).confidence_interval(0.95)
    assert got.n == 3 and got.items == 0 and got.mean == pytest.approx(statistics.fmean([0.10, 0.03, 0.11]))
    assert (got.low, got.high) == (pytest.approx(expected.low), pytest.approx(expected.high))
    one = mean(as_runs({0: 0.3})).interval()
    assert one.mean == 0.3 and math.isnan(one.low) and not one.excludes_zero  # one seed: no interval
    flat = mean(as_runs({0: 0.97, 1: 0.97})).interval()
    assert math.isnan(flat.low)  # runs alone with no spread: nothing measured, no zero-width interval


def test_the_crossed_variance_is_unbiased_for_seeds_and_items():
    # Two-way random effects with known parts: var(grand mean) = s_u^2/U + s_i^2/I + s_e^2/(U I).
    rng = np.random.default_rng(0)
    units, items, su, si, se = 5, 300, 0.02, 0.3, 0.25
    truth = su**2 / units + si**2 / items + se**2 / (units * items)
    tables = (rng.normal(0, su, (2000, units, 1)) + rng.normal(0, si, (2000, 1, items))
              + rng.normal(0, se, (2000, units, items)))  # fmt: skip
    estimates = [crossed_variance(t)[0] for t in tables]
    grand = tables.mean(axis=(1, 2))
    assert np.var(grand) == pytest.approx(truth, rel=0.1)
    assert np.mean(estimates) == pytest.approx(truth, rel=0.1)
    # Seeds dominate: about U - 1 degrees of freedom; the items' own spread dominates: many more.
    seeds_vary = rng.normal(0, 1, (units, 1)) + rng.normal(0, 1e-3, (units, items))
    items_vary = rng.normal(0, 1, (1, items)) + rng.normal(0, 0.1, (units, items))
    assert crossed_variance(seeds_vary)[1] == pytest.approx(units - 1, abs=0.5)
    assert crossed_variance(items_vary)[1] > 100


def test_no_spread_at_a_bound_is_exact_not_zero_width():
    perfect = as_runs({s: [1.0] * 300 for s in range(5)})
    interval = difference(perfect, perfect).interval(0.95)
    width = 1 - 0.025 ** (1 / 1500)  # Clopper-Pearson: 0 discordant pairs of 1500
    assert interval.exact and interval.low == pytest.approx(-width) and interval.high == pytest.approx(width)
    alone = mean(perfect).interval(0.95)
    assert alone.high == 1.0 and alone.low == pytest.approx(1 - width) and alone.items == 300
    # p of "utility at least 0.02 worse" given 1500 identical pairs: 0.98 ** 1500
    assert difference(perfect, perfect).p_above(-0.02) == pytest.approx(0.98**1500)


def test_items_widen_what_seeds_alone_would_call_exact():
    # Every seed one item short (-1/300 on every seed): the seeds agree perfectly, the items do not.
    short = as_runs({s: [0.0] + [1.0] * 299 for s in range(5)})
    full = as_runs({s: [1.0] * 300 for s in range(5)})
    interval = difference(short, full).interval(0.95)
    assert interval.mean == pytest.approx(-1 / 300) and interval.low < interval.mean < interval.high
    assert not interval.excludes_zero


def test_bounds_stay_within_the_range():
    rng = np.random.default_rng(1)
    rare = as_runs({s: (rng.random(300) < 0.01).astype(float) for s in range(3)})
    interval = mean(rare).interval(0.95)
    assert interval.low == 0.0 < interval.high < 1.0  # a t interval around 0.01 would go below 0


def test_several_builds_make_the_build_the_draw():
    # Two seeds on each of three builds: the builds' means are the independent draws (2 degrees of freedom).
    values = {("0", 0): 0.50, ("0", 1): 0.52, ("1", 0): 0.60, ("1", 1): 0.62, ("2", 0): 0.70, ("2", 1): 0.72}
    runs = {unit: {"": value} for unit, value in values.items()}
    estimate = mean(runs)
    builds = [0.51, 0.61, 0.71]
    assert estimate.df == 2 and estimate.mean == pytest.approx(0.61)
    assert estimate.se == pytest.approx(statistics.stdev(builds) / math.sqrt(3))
