"""Beta for a forgetting budget: a search over beta on measured probes, each a few seeds with 95 % intervals.

SC-LoRA trades utility for preservation through beta: forgetting is expected to fall and utility to fall (or
stay) as beta rises, so the beta that learns most within a budget is the smallest one within it. The search
brackets that boundary: `lo` is the largest beta measured over budget (0 before any), `hi` the smallest measured
within it (1 before any), and each probe bisects the bracket, the first one placed where the capture's forecast
says half of the trade-off is done. It stops when the bracket is `tolerance` wide or after `max_runs` probes.

A probe is within budget only when the decision rule's one-sided upper bound (sclora.analysis.decision.ALPHA, 95 %) of
each budgeted forgetting is within the budget (a mean within budget is not enough). The bound is
sclora.analysis.intervals' over seeds AND items (per-item forgetting, base minus run in the metric's good direction,
where the runs' samples are read), valid for bimodal compliance; without per-item scores it is over seeds alone.

The choice among probes within budget, "the beta that learns most within the budget": the one of highest mean
utility; probes whose mean utility is within `utility_tolerance` (tracking.gates.utility_tolerance) of it count
as equal, and of equals the smallest beta, which by the trade-off learns most (utility saturates before
preservation does). The chosen beta is then confirmed on fresh seeds (`confirm`): it must be within budget on
them too, else the confirmation says so and steps back to the next candidate of larger beta, and registers
nothing when none confirms. The expected monotone trade-off is checked on the measurements, not assumed. No
library does a budgeted search over one knob with interval-based acceptance; this file is that rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise

from sclora.analysis.decision import ALPHA
from sclora.analysis.intervals import Estimate, Interval, Runs, difference, mean

UPPER_BOUND = 1 - 2 * ALPHA  # the two-sided confidence whose upper end is the rule's one-sided bound


@dataclass
class Probe:
    """One beta, measured over seeds: per-seed utility and forgetting (metric -> seed -> delta), and where the runs'
    samples were read, per-item forgetting (metric -> (build, seed) -> item -> delta)."""

    beta: float
    utility: dict[int, float]
    forgetting: dict[str, dict[int, float]]
    items: dict[str, Runs] = field(default_factory=dict)

    def estimate(self, metric: str) -> Estimate:
        if metric == "utility":
            return mean(_seed_runs(self.utility))
        return mean(self.items.get(metric) or _seed_runs(self.forgetting[metric]), share=False)

    def interval(self, metric: str) -> Interval:
        return self.estimate(metric).interval()

    def upper(self, metric: str) -> float:
        """The rule's one-sided upper bound of `metric` (NaN when none can be computed, e.g. from one seed)."""
        return self.estimate(metric).interval(UPPER_BOUND).high

    def overshoot(self, budget: Mapping[str, float]) -> dict[str, float]:
        """How far each budgeted forgetting's upper bound exceeds its budget (only those that do; an upper
        bound that cannot be computed, e.g. from one seed, counts as infinitely over)."""
        over = {}
        for metric, limit in budget.items():
            high = self.upper(metric) if metric in self.forgetting else math.nan
            amount = math.inf if math.isnan(high) else high - limit
            if amount > 0:
                over[metric] = amount
        return over

    def within(self, budget: Mapping[str, float]) -> bool:
        return not self.overshoot(budget)

    def summary(self, budget: Mapping[str, float]) -> dict:
        """JSON-ready: beta, utility and each budgeted forgetting as mean [low, high], within budget or not."""
        shown = {metric: self.interval(metric) for metric in ("utility", *budget)}
        return {
            "beta": self.beta,
            "seeds": len(self.utility),
            "within_budget": self.within(budget),
            **{metric: {"mean": i.mean, "low": i.low, "high": i.high, "items": i.items} for metric, i in shown.items()},
            **{f"{metric}_upper_bound": self.upper(metric) for metric in budget},
        }


def _seed_runs(values: Mapping[int, float]) -> Runs:
    return {("", seed): {"": value} for seed, value in values.items()}


@dataclass
class Selection:
    """The search's outcome: every probe in the order run, the chosen beta (None when nothing is within budget),
    why it stopped, disagreements with the expected trade-off, and a one-line message."""

    budget: dict[str, float]
    probes: list[Probe]
    chosen: float | None
    stopped: str
    disagreements: list[str] = field(default_factory=list)
    message: str = ""
    candidates: list[float] = field(default_factory=list)  # within budget, in the order of choice

    def probe(self, beta: float) -> Probe:
        return next(p for p in self.probes if p.beta == beta)


def first_beta(forecast: Mapping | None) -> float:
    """Where the forecast says half of the trade-off is done: the beta whose D- energy share is halfway between
    its values at beta 0 and 1 (0.5 without a forecast)."""
    if not forecast:
        return 0.5
    betas, shares = forecast["betas"], forecast["neg_share"]
    halfway = (shares[0] + shares[-1]) / 2
    for (b0, s0), (b1, s1) in pairwise(zip(betas, shares, strict=True)):
        if (s0 - halfway) * (s1 - halfway) <= 0 and s0 != s1:
            return round(b0 + (b1 - b0) * (s0 - halfway) / (s0 - s1), 3)
    return 0.5


def search(
    measure: Callable[[float], Probe],
    budget: Mapping[str, float],
    *,
    start: float = 0.5,
    max_runs: int = 5,
    tolerance: float = 0.05,
    utility_tolerance: float = 0.0,
) -> Selection:
    """Probe betas by `measure(beta)` until the budget's boundary is bracketed within `tolerance` or `max_runs`
    probes have run; returns the Selection."""
    if not budget:
        raise ValueError("forgetting budget is empty: name at least one preserved metric and its limit")
    if not 0.0 <= start <= 1.0:
        raise ValueError(f"start beta must be in [0, 1], got {start}")
    probes: list[Probe] = []
    low, high, beta = 0.0, 1.0, start
    stopped = f"max_runs ({max_runs} probes)"
    while len(probes) < max_runs:
        probe = measure(beta)
        probes.append(probe)
        if probe.within(budget):
            high = beta
        else:
            low = beta
        if high - low <= tolerance:
            stopped = f"tolerance (the boundary lies in [{low:g}, {high:g}], width <= {tolerance:g})"
            break
        beta = round((low + high) / 2, 3)
    candidates = choice_order([p for p in probes if p.within(budget)], utility_tolerance)
    chosen = candidates[0] if candidates else None
    selection = Selection(dict(budget), probes, chosen, stopped, disagreements(probes, budget), candidates=candidates)
    selection.message = _message(selection)
    return selection


def choice_order(within: list[Probe], utility_tolerance: float) -> list[float]:
    """The betas within budget in the order of choice: the highest mean utility first, probes within
    `utility_tolerance` of the best counted as equal and, of equals, the smallest beta first (it learns most);
    the rest by utility likewise."""
    order, left = [], sorted(within, key=lambda p: p.beta)
    while left:
        best = max(p.interval("utility").mean for p in left)
        equal = [p for p in left if p.interval("utility").mean >= best - utility_tolerance]
        order += [p.beta for p in equal]
        left = [p for p in left if p not in equal]
    return order


@dataclass
class Confirmation:
    """The chosen beta measured again on fresh seeds: `beta` the one confirmed (None: none), every try in order."""

    beta: float | None
    tries: list[Probe]
    message: str


def confirm(selection: Selection, measure: Callable[[float], Probe]) -> Confirmation:
    """Measure the chosen beta on fresh seeds (`measure`); when it is over budget there, say so and step back to
    the next candidate of larger beta (more preservation), until one confirms or none is left."""
    tries, lines = [], []
    beta = selection.chosen
    while beta is not None:
        probe = measure(beta)
        tries.append(probe)
        if probe.within(selection.budget):
            lines.append(f"beta {beta:g} confirmed on {len(probe.utility)} fresh seeds: "
                         + _bounds(probe, selection.budget))  # fmt: skip
            return Confirmation(beta, tries, "; ".join(lines))
        lines.append(f"beta {beta:g} NOT confirmed on {len(probe.utility)} fresh seeds: "
                     + _bounds(probe, selection.budget))  # fmt: skip
        beta = next((c for c in selection.candidates if c > beta), None)
        lines.append(f"stepping back to beta {beta:g}" if beta is not None else "no candidate left: nothing registered")
    return Confirmation(None, tries, "; ".join(lines))


def _bounds(probe: Probe, budget: Mapping[str, float]) -> str:
    return ", ".join(f"{m} upper bound {probe.upper(m):.3f} (budget {limit:g})" for m, limit in budget.items())


def disagreements(probes: list[Probe], budget: Mapping[str, float]) -> list[str]:
    """Where the measurements contradict the expected trade-off between neighbouring betas: forgetting that rises,
    or utility that rises, with beta. Each says whether the paired interval over the shared seeds resolves it."""
    found = []
    ordered = sorted(probes, key=lambda p: p.beta)
    for before, after in pairwise(ordered):
        checks = [("utility", after.utility, before.utility, True)]
        checks += [(f"{m} forgetting", after.forgetting[m], before.forgetting[m], False) for m in budget
                   if m in after.forgetting and m in before.forgetting]  # fmt: skip
        for name, values, baseline, share in checks:
            change = difference(_seed_runs(values), _seed_runs(baseline), share=share).interval()
            if change.mean > 0:
                resolved = "resolved: its 95 % interval" if change.low > 0 else "not resolved: its 95 % interval"
                found.append(
                    f"{name} rises from beta {before.beta:g} to {after.beta:g} by {change.mean:+.3f} "
                    f"({resolved} [{change.low:+.3f}, {change.high:+.3f}])"
                )
    return found


def _message(selection: Selection) -> str:
    asked = ", ".join(f"{metric} <= {limit:g}" for metric, limit in selection.budget.items())
    runs = sum(len(p.utility) for p in selection.probes)
    if selection.chosen is not None:
        probe = selection.probe(selection.chosen)
        shown = ", ".join(f"{m} {probe.interval(m).mean:.3f} (upper bound {probe.upper(m):.3f})"
                          for m in selection.budget)  # fmt: skip
        return (
            f"beta {selection.chosen:g}: utility {probe.interval('utility').mean:.3f}, forgetting {shown}; "
            f"budget {asked}; {len(selection.probes)} probes, {runs} training runs; stopped at {selection.stopped}"
        )
    least = min(selection.probes, key=lambda p: (max(p.overshoot(selection.budget).values()), p.beta))
    missed = least.overshoot(selection.budget)
    over = ", ".join(f"{m} {least.upper(m):.3f}" for m in selection.budget if m in missed)
    return (
        f"the budget cannot be met: it asked {asked}; the least forgetting measured was at beta {least.beta:g} "
        f"(upper bounds {over}); {len(selection.probes)} probes, {runs} training runs"
    )
