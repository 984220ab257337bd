"""The comparison at matched utility: each unit's fronts read at fixed utility levels, as a results table that
the paper's claims (sclora.analysis.claims) judge unchanged, each level a task.

A row is one (task, config, build, seed) at one level: `knowledge` is the knowledge the unit keeps there (base
knowledge - the front's knowledge forgetting at the level), `attack_success_rate` the compliance front's value
at the level, `utility` the level itself, `lr` and `step` empty (a front point is no one rate). Units whose
front does not reach a level have no row at it. Judge it with `MATCHED_RULE` (builds as a blocking factor) and
`matched_utility=True` (utility is equal by construction).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from sclora.analysis.decision import CONVERGENCE, CONVERGENCE_EFFECT, Rule
from sclora.analysis.fronts import (
    Point,
    check_points,
    compliance,
    first_checkpoint_utility,
    forgetting_at,
    knowledge_forgetting,
    units,
)
from sclora.analysis.results import Results

MATCHED_RULE = Rule(builds="block")
# Convergence is judged on its own endpoint: the best utility at the first checkpoint (higher is faster).
CONVERGENCE_RULE = Rule(builds="block", endpoints={CONVERGENCE: +1}, smallest_effect={CONVERGENCE: CONVERGENCE_EFFECT})


def level_task(task: str, level: float) -> str:
    """The task name a utility level becomes in the matched table."""
    return f"{task} at utility {level:g}"


def matched_results(points: Sequence[Point], base: Mapping[int, Mapping[str, float]], levels: Sequence[float]):
    """The matched table (sclora.analysis.results.Results, runs only): a row per (task, config, build, seed) and
    level."""
    check_points(points, base)
    lost = knowledge_forgetting(base)
    rows = []
    for (build, task, method, beta, seed), members in units(points).items():
        for level in levels:
            knowledge = forgetting_at(members, level, lost)
            harmful = forgetting_at(members, level, compliance)
            if knowledge is None and harmful is None:
                continue
            name = level_task(task, level)
            rows.append({"run": f"{name}-{method}{'' if beta is None else f'-{beta:g}'}-{seed}-build{build}",
                         "task": name, "method": method, "beta": math.nan if beta is None else beta, "seed": seed,
                         "build": str(build), "lr": math.nan, "step": math.nan, "utility": float(level),
                         "knowledge": math.nan if knowledge is None else float(base[build]["knowledge"]) - knowledge,
                         "attack_success_rate": math.nan if harmful is None else harmful})  # fmt: skip
    return Results(rows)


def convergence_results(points: Sequence[Point]) -> Results:
    """One row per (task, config, build, seed): the unit's best utility at its first checkpoint over the grid's
    rates (`first_checkpoint_utility`), under the task `f"{task} at the first checkpoint"`. Judge it with
    CONVERGENCE_RULE; the units must share their checkpoint steps for the comparison to be one of speed."""
    rows = []
    for (build, task, method, beta, seed), members in units(points).items():
        first = first_checkpoint_utility(members)
        if first is None:
            continue
        name = f"{task} at the first checkpoint"
        rows.append({"run": f"{name}-{method}{'' if beta is None else f'-{beta:g}'}-{seed}-build{build}",
                     "task": name, "method": method, "beta": math.nan if beta is None else beta, "seed": seed,
                     "build": str(build), "lr": math.nan, "step": math.nan, CONVERGENCE: float(first)})  # fmt: skip
    return Results(rows)
