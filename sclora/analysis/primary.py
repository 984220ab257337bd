"""The protocol's primary contrast: one comparison fixed before the run (params' frontier.primary), judged alone, on
held-apart data, with its population stated, and checked against the grid and the budget.

- Alone: one comparison on one endpoint (knowledge kept at one validation-utility level), so no family correction;
  every other claim of the report is secondary.
- Population (`population`): with GENERAL_BUILDS builds or more, builds are the units (a build's seeds averaged; the
  verdict speaks for builds in general, a random build x configuration effect included); with fewer, builds block
  and the verdict speaks for these builds only. Every verdict line says which.
- Grid and budget (`sensitivity`): the same contrast read from the points of half the step budget and from every
  other rate of the grid; a reading that moves by more than the smallest effect is grid-sensitive: it is reported
  as such, not as a finding.
- Speed apart from preservation (`along_rates`): the same contrast at the same rate (sclora.analysis.matched's
  rate table), where a configuration that merely learns faster gains nothing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from sclora.analysis.decision import SMALLEST_EFFECT, Claim, Comparison, Config, Rule, config_name, judge
from sclora.analysis.fronts import Point
from sclora.analysis.intervals import Estimate, difference
from sclora.analysis.matched import Reading, level_task, matched_results, rate_results, rate_task
from sclora.analysis.results import Results, config_runs

GENERAL_BUILDS = 4  # builds as units from this many on: 3 degrees of freedom is the least a t interval can use
ENDPOINT = "knowledge"
GRID_SENSITIVE = "grid-sensitive"


@dataclass(frozen=True)
class Primary:
    """`config` against `versus` on `task`: knowledge kept at validation utility `level`."""

    config: Config
    versus: Config
    level: float
    task: str

    def text(self) -> str:
        return (f"{config_name(self.config)} keeps more knowledge than {config_name(self.versus)} at utility "
                f"{self.level:g} ({self.task})")  # fmt: skip


def population(builds: int) -> Literal["unit", "block"]:
    """How builds enter the rule: as units (builds in general) from GENERAL_BUILDS on, else as blocks."""
    return "unit" if builds >= GENERAL_BUILDS else "block"


def population_text(builds: int) -> str:
    if population(builds) == "unit":
        return f"builds in general ({builds} builds as units, their seeds averaged)"
    return f"these {builds} build(s) only (builds as blocks; {GENERAL_BUILDS} or more builds make them units)"


def judge_primary(
    points: Sequence[Point], base: Mapping[int, Mapping[str, float]], primary: Primary, rule: Rule, reading: Reading
) -> dict:
    """The primary verdict: judge's {"id", "claim", "verdict", "evidence", ...} with "population", "sensitivity"
    ({variant: {"difference", "units"}}), "grid_sensitive" and "rule_verdict" (the rule's own verdict; "verdict" is
    GRID_SENSITIVE where the grid or the budget moves the reading by more than the smallest effect)."""
    builds = len({int(p["build"]) for p in points})
    effect = rule.smallest_effect.get(ENDPOINT, SMALLEST_EFFECT[ENDPOINT])
    rule = dataclasses.replace(rule, builds=population(builds), endpoints={ENDPOINT: +1},
                               smallest_effect={ENDPOINT: effect})  # fmt: skip
    comparison = Comparison(level_task(primary.task, primary.level), primary.config, primary.versus, None)
    claim = Claim("primary", primary.text(), (comparison,))
    matched = matched_results(points, base, [primary.level], reading)
    verdict = judge(claim, matched, rule)
    shifts = sensitivity(points, base, primary, rule, reading)
    moved = [name for name, s in shifts.items() if abs(s["difference"] - shifts["as run"]["difference"]) > effect]
    verdict.update(rule=rule.describe(), population=population_text(builds), sensitivity=shifts,
                   grid_sensitive=bool(moved), rule_verdict=verdict["verdict"])  # fmt: skip
    verdict["evidence"].append(f"population: {population_text(builds)}")
    if moved:
        verdict["verdict"] = GRID_SENSITIVE
        verdict["evidence"].append(f"the reading moves by more than {effect:g} with {', '.join(moved)}: "
                                   "grid-sensitive, not a finding")  # fmt: skip
    return verdict


def _contrast(results: Results, task: str, primary: Primary, rule: Rule) -> Estimate:
    return difference(config_runs(results, task, *primary.config, ENDPOINT),
                      config_runs(results, task, *primary.versus, ENDPOINT), blocks=rule.builds == "block")  # fmt: skip


def sensitivity(
    points: Sequence[Point], base: Mapping[int, Mapping[str, float]], primary: Primary, rule: Rule, reading: Reading
) -> dict[str, dict]:
    """The primary contrast on the points as run, on half the step budget (the checkpoints at or below half of each
    run's steps) and on every other rate of the grid (both halves): {variant: {"difference", "units"}}, variants
    whose points reach nothing left out."""
    rates = sorted({float(p["lr"]) for p in points})
    variants = {
        "as run": points,
        "half the step budget": [p for p in points if 2 * int(p["step"]) <= int(p.get("max_steps") or p["step"])],
        "every other rate (from the lowest)": [p for p in points if float(p["lr"]) in rates[::2]],
        "every other rate (from the second)": [p for p in points if float(p["lr"]) in rates[1::2]],
    }
    task = level_task(primary.task, primary.level)
    shifts = {}
    for name, subset in variants.items():
        if not subset:
            continue
        estimate = _contrast(matched_results(subset, base, [primary.level], reading), task, primary, rule)
        if estimate.units and not math.isnan(estimate.mean):
            shifts[name] = {"difference": estimate.mean, "units": estimate.units}
    return shifts


def along_rates(
    points: Sequence[Point], base: Mapping[int, Mapping[str, float]], primary: Primary, rule: Rule, reading: Reading
) -> dict[float, Estimate]:
    """The primary contrast at the same rate: per rate of the grid where both configurations reach the level on
    some unit, the paired difference of knowledge kept along that rate."""
    rule = dataclasses.replace(rule, builds=population(len({int(p["build"]) for p in points})))
    table = rate_results(points, base, [primary.level], reading)
    estimates = {}
    for lr in sorted({float(p["lr"]) for p in points}):
        estimate = _contrast(table, rate_task(primary.task, primary.level, lr), primary, rule)
        if estimate.units:
            estimates[lr] = estimate
    return estimates
