"""Intervals that fit the data: of a mean or a paired difference, with the seeds' AND the items' variation in them.

A metric of one run is the mean of per-item scores (0/1 for exact match, compliance, refusal) over an eval set,
and the run itself is one draw of the seed (and of the build, where several builds were made). Both vary: a
repeat of the experiment draws other seeds AND, had the eval set been drawn again, other items. The two are
crossed, not nested (every run answers the same items), so the grand mean of the units x items table has the
variance of a two-way random-effects design, sigma2_units / U + sigma2_items / I + sigma2_residual / (U I),
estimated by its mean squares (the ANOVA moment estimator: (MS_units + MS_items - MS_residual) / (U I), never
below the units-only term MS_units / (U I)). Two configurations are compared on the units (build, seed) and
items both have, paired: the table is their item-by-item difference. Where several builds were made, a build
is the unit (its seeds averaged): builds, not seeds, are then the independent draws.

Builds as a blocking factor (`blocks=True`, runs only): where the verdict is about the builds made, not about
builds in general, a build is a block and its seeds the replicates. The estimate is the mean over builds of the
build's mean; its variance is the pooled within-build (seed) variance s_p^2 times sum_b 1/n_b, over B^2 (with equal
seeds per build: sum_b s_b^2 / n_b over B^2), with N - B degrees of freedom. Build effects shared by both sides
cancel in the pairing; what differs between builds (a build x method interaction) is read by `build_differences`
(a one-way ANOVA of the paired differences on the builds, scipy.stats.f_oneway). Where no build has 2 seeds there
is no within-build variance and the estimate falls back to builds as units.

Why not a bootstrap: a crossed ("pigeonhole", Owen 2007) bootstrap counts the residual item x seed variance
twice; on the synthetic protocol tables of tests/synthetic_results.py its standard error of a knowledge
difference was 0.0144 where the estimates' true spread was 0.0105, which cost the rule its power for nothing.
The moment estimator is unbiased for this design and needs no resampling.

The reference is Student's t with Satterthwaite's degrees of freedom for that sum of mean squares (never fewer
than U - 1): where the seeds' spread dominates, as with bimodal compliance (a seed flips into compliance or stays
near 0), that is about U - 1 and widens the interval as 3-5 seeds must; where the items' Bernoulli noise
dominates, it is many more. A t interval over the seeds' values alone would miss the items; the procedure's
error rates on bimodal compliance are what tests/test_decision.py measures. Bounds are clipped to the range.
Hand-written because neither scipy nor statsmodels offers the crossed design's standard error of a mean.

No zero-width interval from zero spread: 0/1 scores with no spread (every item of every seed the same, or every
pair of answers the same) leave uncertainty that no variance estimate sees. Then the scores are Bernoulli
trials (units x items of them) and the interval is the exact Clopper-Pearson one (`scipy.stats.binomtest`); its
p-values are the exact chance of seeing no spread at all. Runs without per-item scores (a table made elsewhere)
have only the units' term, and say so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

CONFIDENCE = 0.95
RUN_MEAN = ""  # the item key of a run without per-item scores: its metric value stands for its one item

# A configuration's runs on one metric: (build, seed) -> item -> score.
Unit = tuple[str, int]
Runs = Mapping[Unit, Mapping[str, float]]


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval: `units` runs (or run pairs), `items` items per run (0: runs only)."""

    mean: float
    low: float
    high: float
    units: int
    items: int = 0
    exact: bool = False  # no spread at a bound: the Clopper-Pearson interval
    blocks: int = 0  # > 0: builds as a blocking factor, this many builds
    builds: int = 0  # > 1: builds as the units (each build's seeds averaged), this many builds

    @property
    def n(self) -> int:
        return self.units

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0  # False when the bounds are NaN

    def text(self, signed: bool = True) -> str:
        fmt = "+.3f" if signed else ".3f"
        if math.isnan(self.low):
            return f"{self.mean:{fmt}} (no interval: {self.units} run(s))"
        what = f"{self.units} seeds x {self.items} items" if self.items else f"{self.units} seeds, runs only"
        if self.blocks:
            what = f"{self.units} seeds in {self.blocks} builds, build blocked, runs only"
        elif self.builds > 1:
            what = f"{self.units} seeds in {self.builds} builds as units, {what.split(', ')[-1]}"
        exact = ", exact: no spread" if self.exact else ""
        return f"{self.mean:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}] ({what}{exact})"


@dataclass(frozen=True)
class Estimate:
    """A mean (or a paired difference) with its standard error; `p_above` / `p_below` are one-sided p-values."""

    mean: float
    se: float  # NaN: fewer than 2 units, or runs-only values with no spread; 0 with `exact_trials`
    df: float  # of the t reference: Satterthwaite's for the variance, at least the independent draws' count - 1
    units: int
    items: int
    exact_trials: int = 0  # > 0: 0/1 scores with no spread; the Bernoulli trials behind the exact interval
    at_bound: bool = False  # every score of every side is the same 0 or 1 (a floor or ceiling for all)
    arms: int = 1
    share: bool = True  # a share in [0, 1]: bounds clipped to [0, 1] (a mean) or [-1, 1] (a difference)
    blocks: int = 0  # > 0: builds as a blocking factor (this many builds), df = units - blocks
    builds: int = 0  # > 1: builds as the units, each build's seeds averaged (df = builds - 1 on run means)

    @property
    def range(self) -> tuple[float, float]:
        if not self.share:
            return (-math.inf, math.inf)
        return (0.0, 1.0) if self.arms == 1 else (-1.0, 1.0)

    def interval(self, confidence: float = CONFIDENCE) -> Interval:
        low_end, high_end = self.range
        if self.exact_trials:  # Clopper-Pearson's bound for 0 (or n) discordant out of n, each way
            width = stats.binomtest(0, self.exact_trials).proportion_ci(confidence, method="exact").high
            low, high = max(self.mean - width, low_end), min(self.mean + width, high_end)
            return Interval(self.mean, low, high, self.units, self.items, exact=True)
        if math.isnan(self.se):
            return Interval(
                self.mean, math.nan, math.nan, self.units, self.items, blocks=self.blocks, builds=self.builds
            )
        half = float(special.stdtrit(self.df, 1 - (1 - confidence) / 2)) * self.se  # Student's t quantile
        low, high = max(self.mean - half, low_end), min(self.mean + half, high_end)
        return Interval(self.mean, low, high, self.units, self.items, blocks=self.blocks, builds=self.builds)

    def p_above(self, threshold: float) -> float:
        """p-value of H0: true value <= threshold (small: the value is shown to exceed it)."""
        if self.exact_trials:
            return _exact_p(self.mean - threshold, self.exact_trials)
        if math.isnan(self.se):
            return math.nan
        return float(special.stdtr(self.df, (threshold - self.mean) / self.se))  # Student's t tail

    def p_below(self, threshold: float) -> float:
        """p-value of H0: true value >= threshold (small: the value is shown to lie below it)."""
        if self.exact_trials:
            return _exact_p(threshold - self.mean, self.exact_trials)
        if math.isnan(self.se):
            return math.nan
        return float(special.stdtr(self.df, (self.mean - threshold) / self.se))


def mean(runs: Runs, *, share: bool = True, blocks: bool = False) -> Estimate:
    """The mean of one configuration's runs over their units and items; `share`: the metric is a share in [0, 1]
    (its bounds are clipped to it), not a log-probability or a delta; `blocks`: builds as a blocking factor."""
    units = sorted(runs)
    table, items = _table([runs], units)
    return _estimate(table[0], None, units, items, share, blocks)


def difference(runs: Runs, baseline: Runs, *, share: bool = True, blocks: bool = False) -> Estimate:
    """`runs` - `baseline`, paired on the (build, seed) units and the items both have (a difference of shares
    lies in [-1, 1]); `blocks`: builds as a blocking factor (runs only: each run's mean)."""
    units = sorted(set(runs) & set(baseline))
    table, items = _table([runs, baseline], units)
    return _estimate(table[0], table[1], units, items, share, blocks)


def build_differences(runs: Runs, baseline: Runs) -> dict:
    """Per build, the mean paired difference (runs - baseline, run means) and its seeds; and the F test of the
    build x method interaction, MS between builds / MS within (scipy.stats.f_oneway on the builds' differences):
    {"builds": {build: {"difference", "seeds"}}, "f", "p", "df": [B - 1, N - B]} (f, p NaN where not testable)."""
    units = sorted(set(runs) & set(baseline))
    groups: dict[str, list[float]] = {}
    for unit in units:
        groups.setdefault(unit[0], []).append(_run_mean(runs[unit]) - _run_mean(baseline[unit]))
    within = len(units) - len(groups)
    f = p = math.nan
    if len(groups) > 1 and within > 0:
        spread = any(np.ptp(g) > 0 for g in groups.values())
        if spread:  # with no within-build spread the ratio is undefined: nothing to test against
            f, p = (float(x) for x in stats.f_oneway(*(np.asarray(g) for g in groups.values())))
    return {"builds": {b: {"difference": float(np.mean(g)), "seeds": len(g)} for b, g in groups.items()},
            "f": f, "p": p, "df": [len(groups) - 1, within]}  # fmt: skip


def _table(sides: list[Runs], units: list[Unit]) -> tuple[list[np.ndarray], list[str]]:
    """Each side as a units x items array over the items every run of every side has; run means when any run
    has no per-item scores (then only the units' variation is measured)."""
    if not units:
        return [np.zeros((0, 1)) for _ in sides], [RUN_MEAN]
    runs = [side[u] for side in sides for u in units]
    keys = tuple(runs[0])
    if RUN_MEAN not in keys and all(tuple(run) == keys for run in runs):  # the usual case: one item order
        return [np.array([list(side[u].values()) for u in units], dtype=float) for side in sides], list(keys)
    common = set.intersection(*(set(run) for run in runs))
    if not common or any(RUN_MEAN in run for run in runs):
        return [np.array([[_run_mean(side[u])] for u in units]) for side in sides], [RUN_MEAN]
    items = sorted(common)
    return [np.array([[side[u][i] for i in items] for u in units], dtype=float) for side in sides], items


def _run_mean(scores: Mapping[str, float]) -> float:
    if RUN_MEAN in scores:
        return float(scores[RUN_MEAN])
    return float(np.mean(list(scores.values())))


def _estimate(a, b, units, items, share, blocks=False) -> Estimate:
    n_items = 0 if items == [RUN_MEAN] else len(items)
    arms = 1 if b is None else 2
    if len(units) == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, n_items, arms=arms, share=share)
    d = a if b is None else a - b
    estimate = float(d.mean())
    values = a if b is None else np.concatenate([a, b])
    at_bound = bool(n_items and values.min() == values.max() and values.flat[0] in (0.0, 1.0))
    builds = [unit[0] for unit in units]
    if blocks and len(units) > len(set(builds)):  # some build has 2 seeds: a within-build variance exists
        return _blocked(d.mean(axis=1), builds, len(units), at_bound, arms, share)  # run means: items 0
    drawn = len(set(builds)) if len(set(builds)) > 1 else 0
    if drawn:  # a build is the draw: average its seeds, and the estimate is the mean of the builds' means
        d = np.stack([d[[i for i, b in enumerate(builds) if b == build]].mean(axis=0) for build in sorted(set(builds))])
        estimate = float(d.mean())
    clusters = d.shape[0]
    if n_items and np.ptp(d) == 0 and np.isin(values, (0.0, 1.0)).all():
        # 0/1 scores and no spread (every pair concordant, or one bound everywhere): exact, never zero width
        return Estimate(estimate, 0.0, clusters - 1.0, len(units), n_items, values.size // arms, at_bound, arms, share,
                        builds=drawn)  # fmt: skip
    if clusters < 2:
        return Estimate(estimate, math.nan, math.nan, len(units), n_items, at_bound=at_bound, arms=arms, share=share)
    variance, df = crossed_variance(d)
    se = math.sqrt(variance) if variance > 0 else math.nan  # runs-only values with no spread: nothing measured
    return Estimate(estimate, se, df, len(units), n_items, at_bound=at_bound, arms=arms, share=share, builds=drawn)


def _blocked(d: np.ndarray, builds: list[str], units: int, at_bound: bool, arms: int, share: bool) -> Estimate:
    """Builds as blocks: the mean of the builds' means, with the pooled within-build variance (module docstring)."""
    groups = [d[[i for i, b in enumerate(builds) if b == build]] for build in sorted(set(builds))]
    estimate = float(np.mean([g.mean() for g in groups]))
    df = units - len(groups)
    pooled = sum(float(np.sum((g - g.mean()) ** 2)) for g in groups) / df
    variance = pooled * sum(1 / g.size for g in groups) / len(groups) ** 2
    se = math.sqrt(variance) if variance > 0 else math.nan  # no spread: nothing measured, as with runs alone
    return Estimate(estimate, se, float(df), units, 0, at_bound=at_bound, arms=arms, share=share, blocks=len(groups))


def crossed_variance(d: np.ndarray) -> tuple[float, float]:
    """The variance of the grand mean of a units x items table with crossed random effects, from its mean squares
    (never below the units-only term), and Satterthwaite's degrees of freedom for it. One column: the units'
    variance of the mean alone, with units - 1 degrees of freedom."""
    units, n_items = d.shape
    row, col, grand = d.mean(axis=1), d.mean(axis=0), d.mean()
    ms_units = n_items * float(np.sum((row - grand) ** 2)) / (units - 1)
    if n_items == 1:
        return ms_units / units, units - 1.0
    ms_items = units * float(np.sum((col - grand) ** 2)) / (n_items - 1)
    residual = d - row[:, None] - col[None, :] + grand
    ms_residual = float(np.sum(residual**2)) / ((units - 1) * (n_items - 1))
    combined = ms_units + ms_items - ms_residual
    if combined <= ms_units:
        return ms_units / (units * n_items), units - 1.0
    # Satterthwaite (1946): a sum of mean squares has about combined^2 / sum(term^2 / its df) degrees of freedom.
    terms = ((ms_units, units - 1), (ms_items, n_items - 1), (ms_residual, (units - 1) * (n_items - 1)))
    df = combined**2 / sum(ms**2 / k for ms, k in terms)
    return combined / (units * n_items), max(float(df), units - 1.0)


def _exact_p(gap: float, trials: int) -> float:
    """p-value of "no spread in `trials` 0/1 trials" against a true value `gap` away on the side tested: the chance
    that a rate `gap` off the observed one leaves every trial as observed, (1 - gap) ** trials."""
    if gap <= 0:
        return 1.0
    return float((1 - min(gap, 1.0)) ** trials)
