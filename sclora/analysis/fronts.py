"""Learning-forgetting fronts: a run scored over a shared learning-rate grid at several checkpoints is a cloud of
(utility, forgetting) points; the comparison reads what each cloud's Pareto front forgets at a matched utility.

A point is one (build, task, method, beta, seed, lr, step) with the suite's metrics (docs/protocol.md; the
keys of POINT_KEYS required, other metrics absent or NaN where not measured), and `base` gives per build the base
model's metrics. A unit is one (build, task, config, seed): its points over the grid's rates and steps.
Forgetting is any function of a point, lower better: knowledge forgetting (`knowledge_forgetting(base)`: base
knowledge - the point's) or harmful compliance (`compliance`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from sclora.analysis.results import number

POINT_KEYS = ("build", "task", "method", "seed", "lr", "step", "utility")  # required; beta only for sclora's
Point = Mapping
Forgetting = Callable[[Point], float]
UnitKey = tuple[int, str, str, float | None, int]  # (build, task, method, beta, seed)


def check_points(points: Sequence[Point], base: Mapping[int, Mapping[str, float]]) -> None:
    """Raise one ValueError naming the first problem: no points, a point without an identity key or utility, a
    build without base metrics (or without base knowledge)."""
    if not points:
        raise ValueError("frontier: no points")
    for i, point in enumerate(points):
        missing = [key for key in POINT_KEYS if point.get(key) is None]
        if missing:
            raise ValueError(f"frontier point {i} ({_where(point)}): missing {', '.join(missing)}")
        number(point["utility"], f"frontier point {i} ({_where(point)}), utility")
    for build in sorted({int(p["build"]) for p in points}):
        if build not in base:
            raise ValueError(f"frontier: build {build} has no base metrics (base has builds {sorted(base)})")
        if not _finite(base[build].get("knowledge")):
            raise ValueError(f"frontier: build {build}'s base metrics have no knowledge")


def _where(point: Point) -> str:
    return ", ".join(f"{key} {point[key]}" for key in ("build", "task", "method", "beta", "seed") if key in point)


def _finite(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def value(point: Point, key: str) -> float:
    """A point's metric as a float, NaN where absent or empty."""
    return number(point.get(key), f"point {_where(point)}, {key}")


def knowledge_forgetting(base: Mapping[int, Mapping[str, float]]) -> Forgetting:
    """Knowledge forgetting of a point: its build's base knowledge minus the point's."""
    return lambda point: float(base[int(point["build"])]["knowledge"]) - value(point, "knowledge")


def compliance(point: Point) -> float:
    """Harmful compliance of a point (attack_success_rate): lower is better, as forgetting is."""
    return value(point, "attack_success_rate")


def unit_key(point: Point) -> UnitKey:
    """(build, task, method, beta, seed): the points of one run over the grid's rates and steps."""
    beta = None if not _finite(point.get("beta")) else float(point["beta"])
    return int(point["build"]), str(point["task"]), str(point["method"]), beta, int(point["seed"])


def units(points: Sequence[Point]) -> dict[UnitKey, list[Point]]:
    """The points grouped by unit, in a stable order."""
    grouped: dict[UnitKey, list[Point]] = {}
    for point in points:
        grouped.setdefault(unit_key(point), []).append(point)
    return dict(sorted(grouped.items(), key=lambda kv: _sortable(kv[0])))


def _sortable(key: UnitKey) -> tuple:
    build, task, method, beta, seed = key
    return build, task, method, -1.0 if beta is None else beta, seed


def nondominated(pairs: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the pairs no other pair dominates, both coordinates maximised, in order of x.

    A pair is dominated when another is at least as good on both and better on one; pairs with a NaN coordinate
    are never on the front."""
    finite = [i for i, (x, y) in enumerate(pairs) if not (math.isnan(x) or math.isnan(y))]
    front = [
        i
        for i in finite
        if not any(pairs[j][0] >= pairs[i][0] and pairs[j][1] >= pairs[i][1] and pairs[j] != pairs[i] for j in finite)
    ]
    return sorted(front, key=lambda i: (pairs[i][0], -pairs[i][1]))


def pareto_front(points: Sequence[Point], forgetting: Forgetting) -> list[Point]:
    """The points of one unit that no other point dominates on utility (higher better) and `forgetting` (lower
    better), sorted by utility (forgetting then rises along it)."""
    pairs = [(value(p, "utility"), -forgetting(p)) for p in points]
    return [points[i] for i in nondominated(pairs)]


def _front_arrays(points: Sequence[Point], forgetting: Forgetting) -> tuple[np.ndarray, np.ndarray]:
    front = pareto_front(points, forgetting)
    return np.array([value(p, "utility") for p in front]), np.array([forgetting(p) for p in front])


def forgetting_at(points: Sequence[Point], level: float, forgetting: Forgetting, interpolate: bool = True):
    """Forgetting at utility `level` on the unit's front; None when no point reaches the level.

    interpolate=False: the least forgetting among the points with utility >= level (the testbed check's
    definition: what the unit achieves at that utility or better). interpolate=True: linear between the two front
    points that bracket the level, the lowest front point's forgetting at or below it (the front's value is then
    never above the step read)."""
    if interpolate:
        read = read_at(points, level, forgetting, {"forgetting": forgetting})
        return None if read is None else read["forgetting"]
    utility, lost = _front_arrays(points, forgetting)
    if utility.size == 0 or utility[-1] < level:
        return None
    return float(lost[utility >= level].min())


def read_at(
    points: Sequence[Point],
    level: float,
    select: Forgetting,
    reads: Mapping[str, Callable[[Point], float]],
    utility: str = "utility",
) -> dict[str, float] | None:
    """What the unit's front reads at utility `level`, the front chosen on (`utility`, `select`) and every read taken
    on the same models: linear between the two front points that bracket the level, each of `reads` with the
    weights that put the front's `utility` at the level (the lowest front point when the level is below it); None
    when no front point reaches the level.

    Choosing the front on one metric and reading another there keeps selection apart from measurement: the
    protocol picks points on validation utility and one half of the knowledge facts and reports the other half
    (sclora.analysis.matched)."""
    front = [points[i] for i in nondominated([(value(p, utility), -select(p)) for p in points])]
    xs = np.array([value(p, utility) for p in front])
    if xs.size == 0 or xs[-1] < level:
        return None
    high = int(np.searchsorted(xs, level))  # the first front point at or above the level
    if high == 0:
        weights = {0: 1.0}
    else:
        share = float((level - xs[high - 1]) / (xs[high] - xs[high - 1]))
        weights = {high - 1: 1.0 - share, high: share}
    return {name: float(sum(w * read(front[i]) for i, w in weights.items() if w)) for name, read in reads.items()}


def area_between(points_a: Sequence[Point], points_b: Sequence[Point], forgetting: Forgetting, low: float, high: float):
    """Integral over utility in [low, high] of (forgetting of a - forgetting of b) on the interpolated fronts, over
    the part of [low, high] both fronts reach; None if they share none of it. Negative: a forgets less."""
    fronts = [_front_arrays(points, forgetting) for points in (points_a, points_b)]
    if any(u.size == 0 for u, _ in fronts):
        return None
    top = min(high, *(u[-1] for u, _ in fronts))
    if top <= low:
        return None
    # Both fronts are piecewise linear: the trapezoid rule on the union of their knots is exact.
    knots = np.unique(np.concatenate([[low, top], *(u[(u > low) & (u < top)] for u, _ in fronts)]))
    gap = np.interp(knots, *fronts[0]) - np.interp(knots, *fronts[1])
    return float(np.trapezoid(gap, knots))


def front_curve(points: Sequence[Point], forgetting: Forgetting, grid: Sequence[float]) -> np.ndarray:
    """The interpolated front on a utility grid (NaN beyond the unit's reach): what the plots average."""
    return np.array([math.nan if (f := forgetting_at(points, u, forgetting)) is None else f for u in grid])
