"""The comparison at matched utility: each unit's front read at fixed utility levels, as a results table that the
paper's claims (sclora.analysis.claims) judge unchanged, each level a task.

What is chosen, on what, and where it is measured (`Reading`, docs/protocol.md):
- the front and the level are on validation utility (the task's validation split), not on the eval split it is
  reported beside;
- the front's points are chosen on the knowledge of one half of the knowledge facts (`knowledge_select`) and the
  knowledge reported is the other half's (`knowledge_report`): no fact both picks a point and measures it;
- every reading at a level is taken on the same two models (the front points bracketing the level, with the same
  weights): knowledge, harmful compliance and eval utility of one interpolated model, never two fronts' endpoints.
Points without the halves or without validation utility (older point files) fall back to the eval metrics, and the
Reading says so.

A row is one (task, config, build, seed) at one level: `knowledge` the knowledge kept there (on the report half),
`attack_success_rate` the compliance of the same models, `utility` the level, `eval_utility` the eval split's
utility of the same models, `lr` and `step` empty (a front point is no one rate). Units whose front does not reach
a level have no row at it. Utility is equal by construction: judge with `matched_utility=True`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sclora.analysis.decision import CONVERGENCE, CONVERGENCE_EFFECT, Rule
from sclora.analysis.fronts import Point, check_points, compliance, read_at, units, value
from sclora.analysis.results import Results

MATCHED_RULE = Rule(builds="block")
# Convergence is judged on its own endpoint: utility at the first checkpoint, at the same rates (higher is faster).
CONVERGENCE_RULE = Rule(builds="block", endpoints={CONVERGENCE: +1}, smallest_effect={CONVERGENCE: CONVERGENCE_EFFECT})
# A point's chat format held when at most this share of its answers lost it (collapse_rate): the convergence reading
# compares speed only at rates where every configuration still answers in format.
FORMAT_HELD = 0.05


@dataclass(frozen=True)
class Reading:
    """The metrics a matched reading uses: `utility` (the front's and the level's axis), `select` (the knowledge that
    picks front points) and `report` (the knowledge reported)."""

    utility: str = "validation_utility"
    select: str = "knowledge_select"
    report: str = "knowledge_report"

    @property
    def held_apart(self) -> bool:
        return self.select != self.report

    def describe(self) -> str:
        axis = "validation utility" if self.utility == "validation_utility" else "EVAL utility (no validation utility)"
        facts = (
            "chosen on one half of the knowledge facts, knowledge reported on the other half"
            if self.held_apart
            else "chosen and reported on the SAME knowledge facts (no held-apart half in these points)"
        )
        return f"fronts and levels on {axis}; front points {facts}; every endpoint read on the same models"


def reading_for(points: Sequence[Point], base: Mapping[int, Mapping[str, float]]) -> Reading:
    """The held-apart reading where every point (and base) has its metrics, else the eval metrics it falls back to."""
    validation = all(_finite(p.get("validation_utility")) for p in points)
    halves = all(_finite(p.get(k)) for p in [*points, *base.values()] for k in ("knowledge_select", "knowledge_report"))
    return Reading(
        "validation_utility" if validation else "utility",
        "knowledge_select" if halves else "knowledge",
        "knowledge_report" if halves else "knowledge",
    )


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def level_task(task: str, level: float) -> str:
    """The task name a utility level becomes in the matched table."""
    return f"{task} at utility {level:g}"


def rate_task(task: str, level: float, lr: float) -> str:
    """The task name of a level read along one rate (the matched-rate table)."""
    return f"{level_task(task, level)} along lr {lr:g}"


def matched_results(
    points: Sequence[Point],
    base: Mapping[int, Mapping[str, float]],
    levels: Sequence[float],
    reading: Reading | None = None,
    by_rate: bool = False,
) -> Results:
    """The matched table (sclora.analysis.results.Results, runs only): a row per (task, config, build, seed) and
    level, each unit's front over all its rates and steps; `by_rate`: the matched-rate table (`rate_results`)."""
    check_points(points, base)
    reading = reading or reading_for(points, base)
    rows = []
    for key, members in units(points).items():
        rates = sorted({float(p["lr"]) for p in members}) if by_rate else [None]
        for lr in rates:
            front = members if lr is None else [p for p in members if float(p["lr"]) == lr]
            for level in levels:
                name = level_task(key[1], level) if lr is None else rate_task(key[1], level, lr)
                rows += _rows(key, front, level, name, base, reading)
    return Results(rows)


def rate_results(
    points: Sequence[Point], base: Mapping[int, Mapping[str, float]], levels: Sequence[float], reading=None
) -> Results:
    """The matched-rate table: each unit's run at one rate is its own front (its checkpoints), read at each level,
    under the task `rate_task(task, level, lr)`. Two configurations compared on it forget at the same utility AND
    the same rate: a configuration that merely learns faster (reaching a level at a lower rate, where everything
    forgets less) gains nothing here."""
    return matched_results(points, base, levels, reading, by_rate=True)


def _rows(key, members, level: float, name: str, base, reading: Reading) -> list[dict]:
    build, _, method, beta, seed = key
    selected = float(base[build][reading.select])
    read = read_at(
        members,
        level,
        lambda p: selected - value(p, reading.select),
        {"knowledge": lambda p: value(p, reading.report), "attack_success_rate": compliance,
         "eval_utility": lambda p: value(p, "utility")},
        utility=reading.utility,
    )  # fmt: skip
    if read is None:
        return []
    return [{"run": f"{name}-{method}{'' if beta is None else f'-{beta:g}'}-{seed}-build{build}", "task": name,
             "method": method, "beta": math.nan if beta is None else beta, "seed": seed, "build": str(build),
             "lr": math.nan, "step": math.nan, "utility": float(level), **read}]  # fmt: skip


def convergence_results(points: Sequence[Point]) -> Results:
    """One row per (task, config, build, seed): its mean utility at the first checkpoint over the rates at which
    every configuration of that (build, task, seed) kept its chat format there (collapse_rate <= FORMAT_HELD; a
    point without collapse_rate counts as held), under the task `f"{task} at the first checkpoint"`. The paper's
    convergence claim, read as it is made: at the same rates, utility reached by a fixed step; a rate where some
    configuration has collapsed (the grid's top) says nothing about speed. Judge it with CONVERGENCE_RULE."""
    grouped = units(points)
    first = min(int(p["step"]) for p in points)
    at_first = {
        key: {float(p["lr"]): p for p in members if int(p["step"]) == first} for key, members in grouped.items()
    }
    rows = []
    for (build, task, method, beta, seed), by_rate in at_first.items():
        rates = _held_rates(at_first[k] for k in at_first if (k[0], k[1], k[4]) == (build, task, seed))
        scores = [value(by_rate[lr], "utility") for lr in rates if lr in by_rate]
        if not scores or any(math.isnan(s) for s in scores):
            continue
        name = f"{task} at the first checkpoint"
        rows.append({"run": f"{name}-{method}{'' if beta is None else f'-{beta:g}'}-{seed}-build{build}",
                     "task": name, "method": method, "beta": math.nan if beta is None else beta, "seed": seed,
                     "build": str(build), "lr": math.nan, "step": float(first),
                     CONVERGENCE: float(np.mean(scores)), "rates": len(scores)})  # fmt: skip
    return Results(rows)


def _held_rates(configurations: Iterable[Mapping[float, Point]]) -> list[float]:
    """The rates every configuration has at the first checkpoint with its format held."""
    configurations = list(configurations)
    rates = set.intersection(*(set(c) for c in configurations))
    return sorted(lr for lr in rates if all(_held(c[lr]) for c in configurations))


def _held(point: Point) -> bool:
    collapse = point.get("collapse_rate")
    return not _finite(collapse) or float(collapse) <= FORMAT_HELD
