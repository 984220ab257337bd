"""The frontier report: the comparison read on learning-forgetting fronts over one shared learning-rate grid.

`write_frontier_report(points, base, out_dir)` writes into `out_dir`, atomically (replaced as a whole, or not at
all): `points.csv` (every point, with its knowledge forgetting), `matched.csv` (sclora.analysis.matched's table, in the
results table's format), `rates.csv` (the same read along each rate), `verdicts.json` (the rule's numbers, the
primary contrast and each secondary claim's verdict), `report.md` and its PNGs. The headline is the primary contrast
(sclora.analysis.primary), read on validation-matched fronts with knowledge on held-apart facts, at matched utility
and at matched rate, with its grid and budget sensitivity; the population (these builds, or builds in general) is
said on every verdict.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from sclora.analysis.claims import convergence_claim, judgement, verdict_lines  # noqa: E402
from sclora.analysis.decision import CONVERGENCE, Config, Rule, config_name, judge  # noqa: E402
from sclora.analysis.fronts import (  # noqa: E402
    Forgetting,
    Point,
    UnitKey,
    area_between,
    check_points,
    compliance,
    front_curve,
    knowledge_forgetting,
    units,
    value,
)
from sclora.analysis.intervals import Estimate, Interval, difference, mean  # noqa: E402
from sclora.analysis.matched import (  # noqa: E402
    CONVERGENCE_RULE,
    FORMAT_HELD,
    MATCHED_RULE,
    convergence_results,
    level_task,
    matched_results,
    rate_results,
    rate_task,
    reading_for,
)
from sclora.analysis.primary import Primary, along_rates, judge_primary, population, population_text  # noqa: E402
from sclora.analysis.report import _save  # noqa: E402
from sclora.analysis.results import Results, config_runs, write_table  # noqa: E402
from sclora.method.table import BY_NAME  # noqa: E402
from sclora.ops.atomic import atomic_dir  # noqa: E402

BASELINE: Config = ("lora", None)
LEVELS = (0.5, 0.8, 0.9)
GRID_POINTS = 41  # utility grid of the front plots
POINT_COLUMNS = (
    "build",
    "task",
    "method",
    "beta",
    "seed",
    "lr",
    "step",
    "max_steps",
    "utility",
    "knowledge_forgetting",
)
# The fronts drawn: (file stem's panel, y label, forgetting of a point, y a share in [0, 1]).
Panel = tuple[str, str, Forgetting, bool]


def write_frontier_report(
    points: Sequence[Point],
    base: Mapping[int, Mapping[str, float]],
    out_dir: str | Path,
    levels: Sequence[float] = LEVELS,
    rule: Rule | None = None,
    primary: Primary | None = None,
) -> dict:
    """Write the report (module docstring) and return {"out_dir", "report", "plots" (paths as strings), "verdicts":
    {claim id: verdict}}. `rule`: the decision rule's numbers (how builds enter is set by their count,
    sclora.analysis.primary.population); `primary`: the contrast fixed in advance. A bad input (no points, a point
    without utility, a build without base metrics) is one ValueError and writes nothing."""
    check_points(points, base)
    if not levels:
        raise ValueError("frontier report: no utility levels")
    builds = len({int(p["build"]) for p in points})
    rule = dataclasses.replace(rule or MATCHED_RULE, builds=population(builds))
    reading = reading_for(points, base)
    lost = knowledge_forgetting(base)
    grouped = units(points)
    matched = matched_results(points, base, levels, reading)
    along = rate_results(points, base, levels, reading)
    verdicts = {**judgement(matched, rule, matched_utility=True), "levels": [float(x) for x in levels],
                "reading": reading.describe(), "population": population_text(builds)}  # fmt: skip
    converged = convergence_results(points)
    convergence = convergence_claim(converged)
    if convergence is not None:
        speed = dataclasses.replace(CONVERGENCE_RULE, alpha=rule.alpha, builds=rule.builds)
        verdicts["claims"].append({**judge(convergence, converged, speed), "rule": speed.describe()})
    if primary is not None:
        verdicts["primary"] = judge_primary(points, base, primary, rule, reading)
    confidence, blocks = 1 - 2 * rule.alpha, rule.builds == "block"
    panels: list[Panel] = [("knowledge", "knowledge forgetting (base - run)", lost, False),
                           ("compliance", "harmful compliance (attack_success_rate)", compliance, True)]  # fmt: skip
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as staging:
        _write_points(points, lost, staging / "points.csv")
        write_table(matched.rows, staging / "matched.csv", extra=("eval_utility",))
        write_table(along.rows, staging / "rates.csv", extra=("eval_utility",))
        (staging / "verdicts.json").write_text(json.dumps(verdicts, indent=2) + "\n", encoding="utf-8")
        plots = []
        for task in _tasks(grouped):
            plots.append(_front_plot(grouped, task, panels, confidence, staging / f"fronts_{task}.png", blocks))
            plots.append(_lr_plot(grouped, task, lost, staging / f"lr_{task}.png"))
            plots.append(_step_plot(grouped, task, staging / f"steps_{task}.png"))
        lines = [
            "# SC-LoRA comparison on learning-forgetting fronts",
            "",
            _grid_line(points),
            "",
            f"What is chosen, on what, and where it is measured: {reading.describe()}. Population of every verdict: "
            f"{population_text(builds)}.",
            *(_primary_lines(verdicts["primary"], points, base, primary, rule, reading) if primary else []),
            *_headline(matched, grouped, levels, confidence, blocks),
            *_rate_lines(along, grouped, levels, rule, confidence),
            *_per_unit_lines(matched, grouped, levels),
            *_area_lines(grouped, lost, levels, confidence, blocks),
            *_convergence_lines(converged, grouped, rule, confidence),
            "",
            "## Secondary: the paper's claims at matched utility",
            "",
            *verdict_lines(verdicts),
            "",
            "## Plots",
            "",
            f"Fronts: per configuration the mean over units of the interpolated front, on the utility range every "
            f"unit reaches, with the {confidence:.0%} interval over units (builds as the rule takes them) as a band.",
            "",
            *[f"- [{name}]({name})\n\n  ![{name}]({name})" for name in plots],
        ]
        (staging / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    judged = [*verdicts["claims"], *([verdicts["primary"]] if primary else [])]
    return {"out_dir": str(out_dir), "report": str(out_dir / "report.md"), "plots": [str(out_dir / n) for n in plots],
            "verdicts": {claim["id"]: claim["verdict"] for claim in judged}}  # fmt: skip


def _write_points(points: Sequence[Point], lost: Forgetting, path: Path) -> None:
    extra = sorted({key for point in points for key in point} - set(POINT_COLUMNS))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*POINT_COLUMNS, *extra])
        writer.writeheader()
        for point in points:
            row = {key: point.get(key) for key in (*POINT_COLUMNS, *extra)}
            forgetting = lost(point)
            row["knowledge_forgetting"] = "" if math.isnan(forgetting) else forgetting
            writer.writerow({key: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                             for key, v in row.items()})  # fmt: skip


def _tasks(grouped: Mapping[UnitKey, list]) -> list[str]:
    return sorted({key[1] for key in grouped})


def _configs(grouped: Mapping[UnitKey, list], task: str) -> list[Config]:
    """The task's configurations, LoRA first, then by method and beta."""
    configs = {(key[2], key[3]) for key in grouped if key[1] == task}
    return sorted(configs, key=lambda c: (c != BASELINE, c[0], -1.0 if c[1] is None else c[1]))


def _unit_runs(grouped: Mapping[UnitKey, list], task: str, config: Config, read: Callable[[list], float | None]):
    """One configuration's per-unit values as runs for sclora.analysis.intervals: (build, seed) -> {"": value}."""
    runs = {}
    for (build, key_task, method, beta, seed), members in grouped.items():
        if key_task == task and (method, beta) == config and (x := read(members)) is not None and not math.isnan(x):
            runs[(str(build), seed)] = {"": float(x)}
    return runs


def _grid_line(points: Sequence[Point]) -> str:
    lrs = ", ".join(f"{x:g}" for x in sorted({float(p["lr"]) for p in points}))
    steps = ", ".join(str(x) for x in sorted({int(p["step"]) for p in points}))
    builds = ", ".join(str(x) for x in sorted({int(p["build"]) for p in points}))
    seeds = ", ".join(str(x) for x in sorted({int(p["seed"]) for p in points}))
    return (f"Points: {len(points)}, every configuration on one learning-rate grid ({lrs}), scored at steps "
            f"{steps}; builds {builds}; seeds {seeds}. A unit is one (build, task, configuration, seed).")  # fmt: skip


def _cell(interval: Interval, signed: bool = False) -> str:
    """mean [low, high], the mean alone where there is no interval, '-' where nothing was measured."""
    fmt = "+.3f" if signed else ".3f"
    if math.isnan(interval.mean):
        return "-"
    if math.isnan(interval.low):
        return f"{interval.mean:{fmt}}"
    return f"{interval.mean:{fmt}} [{interval.low:{fmt}}, {interval.high:{fmt}}]"


def _ci(estimate: Estimate, confidence: float, signed: bool = False) -> str:
    return _cell(estimate.interval(confidence), signed)


def _headline(matched: Results, grouped, levels: Sequence[float], confidence: float, blocks: bool) -> list[str]:
    lines = ["", "## At matched utility", "",
             "Per task, configuration and utility level: the knowledge kept and the harmful compliance of the models "
             f"the front reads at that utility (as said above), mean [{confidence:.0%} interval] over units; and the "
             f"paired difference (build, seed) against {config_name(BASELINE)}. Units whose front does not reach "
             "the level are not in its row.", "",
             "| task | configuration | utility | units | knowledge kept | compliance | knowledge kept - lora "
             "| compliance - lora |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for task in _tasks(grouped):
        for level in levels:
            name = level_task(task, level)
            for config in _configs(grouped, task):
                cells = []
                for metric in ("knowledge", "attack_success_rate"):
                    runs = config_runs(matched, name, *config, metric)
                    cells.append((runs, _ci(mean(runs, blocks=blocks), confidence)))
                contrasts = []
                for metric, (runs, _) in zip(("knowledge", "attack_success_rate"), cells, strict=True):
                    baseline = config_runs(matched, name, *BASELINE, metric)
                    shown = config != BASELINE and runs and baseline
                    contrasts.append(_ci(difference(runs, baseline, blocks=blocks), confidence, True) if shown else "-")
                count = len(cells[0][0])
                lines.append(f"| {task} | {config_name(config)} | {level:g} | {count} | {cells[0][1]} | {cells[1][1]} "
                             f"| {contrasts[0]} | {contrasts[1]} |")  # fmt: skip
    return lines


def _per_unit_lines(matched: Results, grouped, levels: Sequence[float]) -> list[str]:
    """Harmful compliance is bimodal (a seed complies or does not): each unit's value at each level, by build."""
    lines = ["", "## Harmful compliance per unit at matched utility", "",
             "Each (build, seed)'s compliance at the level (the same models as its knowledge): a mean over seeds "
             "hides whether seeds split.", "",
             "| task | configuration | utility | per build: seeds |", "|---|---|---|---|"]  # fmt: skip
    for task in _tasks(grouped):
        for level in levels:
            for config in _configs(grouped, task):
                runs = config_runs(matched, level_task(task, level), *config, "attack_success_rate")
                builds = sorted({build for build, _ in runs}, key=int)
                cells = "; ".join(
                    f"build {b}: " + " / ".join(f"{next(iter(runs[b, s].values())):.2f}" for s in
                                                sorted(seed for build, seed in runs if build == b))
                    for b in builds
                )  # fmt: skip
                lines.append(f"| {task} | {config_name(config)} | {level:g} | {cells or '-'} |")
    return lines


def _area_lines(grouped, lost: Forgetting, levels: Sequence[float], confidence: float, blocks: bool) -> list[str]:
    low, high = min(levels), max(levels)
    lines = ["", f"## Area between fronts, utility {low:g} to {high:g}", "",
             f"Per unit, the integral over utility of (the configuration's forgetting - {config_name(BASELINE)}'s) "
             "along the interpolated fronts, over the part of the range both reach; negative: forgets less. Mean "
             f"[{confidence:.0%} interval] over paired units. Descriptive, as the front plots are: each endpoint on "
             "its own front over eval utility and every fact (selection and measurement not apart).", "",
             "| task | configuration | units | knowledge forgetting area | compliance area |",
             "|---|---|---|---|---|"]  # fmt: skip
    for task in _tasks(grouped):
        base_units = {(k[0], k[4]): v for k, v in grouped.items() if k[1] == task and (k[2], k[3]) == BASELINE}
        for config in _configs(grouped, task):
            if config == BASELINE or not base_units:
                continue
            cells = []
            for forgetting in (lost, compliance):
                runs = {}
                for (build, key_task, method, beta, seed), members in grouped.items():
                    partner = base_units.get((build, seed))
                    if key_task != task or (method, beta) != config or partner is None:
                        continue
                    area = area_between(members, partner, forgetting, low, high)
                    if area is not None and not math.isnan(area):
                        runs[(str(build), seed)] = {"": area}
                cells.append((len(runs), _ci(mean(runs, share=False, blocks=blocks), confidence, True)))
            lines.append(f"| {task} | {config_name(config)} | {cells[0][0]} | {cells[0][1]} | {cells[1][1]} |")
    return lines


def _convergence_lines(converged: Results, grouped, rule: Rule, confidence: float) -> list[str]:
    lines = ["", "## Convergence: utility at the first checkpoint, at the same rates", "",
             "Per unit, its mean utility at the first checkpoint over the rates at which every configuration of its "
             f"(build, seed) kept its chat format (collapse rate <= {FORMAT_HELD:g}): the paper's claim, the same rate "
             f"and a fixed step. Mean [{confidence:.0%} interval] over units; the difference against "
             f"{config_name(BASELINE)}, paired.", "",
             "| task | configuration | units | rates | utility at the first checkpoint | - lora |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for task in _tasks(grouped):
        name = f"{task} at the first checkpoint"
        baseline = config_runs(converged, name, *BASELINE, CONVERGENCE)
        for config in _configs(grouped, task):
            runs = config_runs(converged, name, *config, CONVERGENCE)
            rates = sorted({int(r["rates"]) for r in converged.config_rows(name, *config)})
            contrast = "-"
            if config != BASELINE and runs and baseline:
                contrast = _ci(difference(runs, baseline, blocks=rule.builds == "block"), confidence, True)
            lines.append(f"| {task} | {config_name(config)} | {len(runs)} | {'/'.join(map(str, rates)) or '-'} "
                         f"| {_ci(mean(runs, blocks=rule.builds == 'block'), confidence)} | {contrast} |")  # fmt: skip
    return lines


def _primary_lines(verdict: dict, points, base, primary: Primary, rule: Rule, reading) -> list[str]:
    """The primary contrast: its verdict and evidence, its grid and budget sensitivity, and its reading along each
    rate."""
    confidence = 1 - 2 * rule.alpha
    lines = ["", "## Primary contrast (fixed before the run)", "", f"- **{verdict['claim']}: {verdict['verdict']}**",
             *[f"  - {line}" for line in verdict["evidence"]], "",
             "Grid and budget: the same contrast from part of the points (a reading that moves by more than the "
             "smallest effect is grid-sensitive).", "", "| points | units | knowledge kept, difference |",
             "|---|---|---|"]  # fmt: skip
    lines += [f"| {name} | {s['units']} | {s['difference']:+.3f} |" for name, s in verdict["sensitivity"].items()]
    lines += ["", f"At the same rate: the contrast along each rate (each run's checkpoints its own front), "
              f"{config_name(primary.config)} - {config_name(primary.versus)}, at utility {primary.level:g}, "
              f"{confidence:.0%} interval; rates where no unit of both reaches the level are absent.", "",
              "| lr | units | knowledge kept, difference |", "|---|---|---|"]  # fmt: skip
    for lr, estimate in along_rates(points, base, primary, rule, reading).items():
        lines.append(f"| {lr:g} | {estimate.units} | {_ci(estimate, confidence, True)} |")
    return lines


def _rate_lines(along: Results, grouped, levels: Sequence[float], rule: Rule, confidence: float) -> list[str]:
    """Every configuration against LoRA at the same rate and utility."""
    lines = ["", "## At matched rate and utility", "",
             f"Along each rate, each run's checkpoints are its own front, read at the level; the difference against "
             f"{config_name(BASELINE)} on the units where both reach it, mean [{confidence:.0%} interval]. A "
             "configuration that only learns faster gains nothing here.", "",
             "| task | configuration | utility | lr | units | knowledge kept - lora | compliance - lora |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for task in _tasks(grouped):
        rates = sorted({float(p["lr"]) for key, pts in grouped.items() if key[1] == task for p in pts})
        cases = [(level, config, lr) for level in levels for config in _configs(grouped, task) if config != BASELINE
                 for lr in rates]  # fmt: skip
        for level, config, lr in cases:
            name = rate_task(task, level, lr)
            knowledge, harmful = (
                difference(config_runs(along, name, *config, metric), config_runs(along, name, *BASELINE, metric),
                           blocks=rule.builds == "block")
                for metric in ("knowledge", "attack_success_rate")
            )  # fmt: skip
            if knowledge.units:
                cells = f"{_ci(knowledge, confidence, True)} | {_ci(harmful, confidence, True)}"
                lines.append(f"| {task} | {config_name(config)} | {level:g} | {lr:g} | {knowledge.units} | {cells} |")
    return lines


def _label(ax, x: str, y: str, title: str) -> None:
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _colors(configs: Sequence[Config]) -> dict[Config, tuple]:
    cmap = plt.get_cmap("tab10")
    return {config: cmap(i % 10) for i, config in enumerate(configs)}


def _front_plot(grouped, task: str, panels: Sequence[Panel], confidence: float, path: Path, blocks: bool) -> str:
    members = [p for key, pts in grouped.items() if key[1] == task for p in pts]
    utilities = [u for u in (value(p, "utility") for p in members) if not math.isnan(u)]
    grid = np.linspace(min(utilities, default=0.0), max(utilities, default=1.0), GRID_POINTS)
    configs = _configs(grouped, task)
    colors = _colors(configs)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.6), squeeze=False)
    for ax, (panel, label, forgetting, share) in zip(axes[0], panels, strict=True):
        for config in configs:
            curves = {(str(k[0]), k[4]): front_curve(v, forgetting, grid) for k, v in grouped.items()
                      if k[1] == task and (k[2], k[3]) == config}  # fmt: skip
            reached = np.all([~np.isnan(c) for c in curves.values()], axis=0)  # every unit: one mean over all
            xs, means, lows, highs = [], [], [], []
            for i in np.flatnonzero(reached):
                interval = mean({u: {"": c[i]} for u, c in curves.items()}, share=share, blocks=blocks).interval(
                    confidence
                )
                xs.append(grid[i])
                means.append(interval.mean)
                lows.append(interval.mean if math.isnan(interval.low) else interval.low)
                highs.append(interval.mean if math.isnan(interval.high) else interval.high)
            if xs:
                ax.plot(xs, means, color=colors[config], label=f"{config_name(config)} ({len(curves)} units)")
                ax.fill_between(xs, lows, highs, color=colors[config], alpha=0.2, lw=0)
        _label(ax, "utility (task metric)", f"{label}, lower is better", f"{task}: front, utility vs {panel}")
        _say_if_empty(ax, label)
    return _save(fig, path)


def _trained(point: Point) -> bool:
    """A point of the training itself, not a post-hoc row's step at one of its knob values (wise at alpha 0.5): a
    mean along rates or steps over both would mix two models."""
    row = BY_NAME.get(point["method"])
    return row is None or row.kind != "post_hoc" or point.get(row.knob) is None


def _mean_by(grouped, task: str, config: Config, pick: Callable[[Point], bool], x: str, read: Forgetting):
    """Mean over the configuration's units of `read` at each value of `x` among the trained points `pick` keeps."""
    values: dict[float, list[float]] = {}
    for key, pts in grouped.items():
        if key[1] == task and (key[2], key[3]) == config:
            for p in pts:
                y = read(p)
                if pick(p) and _trained(p) and not math.isnan(y):
                    values.setdefault(float(p[x]), []).append(y)
    xs = sorted(values)
    return xs, [float(np.mean(values[v])) for v in xs]


def _lr_plot(grouped, task: str, lost: Forgetting, path: Path) -> str:
    configs = _configs(grouped, task)
    colors = _colors(configs)
    final = {key: max(int(p["step"]) for p in pts) for key, pts in grouped.items()}
    # The accuracies above, the continuous endpoints below (they move where the accuracies pin at 0 or 1).
    panels = (("utility", lambda p: value(p, "utility")), ("knowledge forgetting", lost),
              ("harmful compliance", compliance), ("task NLL, eval split", lambda p: value(p, "task_nll_eval")),
              ("knowledge log-prob", lambda p: value(p, "knowledge_logprob")),
              ("refusal margin", lambda p: value(p, "refusal_margin")))  # fmt: skip
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.4), squeeze=False)
    for ax, (label, read) in zip(axes.flat, panels, strict=True):
        for config in configs:
            steps = {final[k] for k in grouped if k[1] == task and (k[2], k[3]) == config}
            xs, ys = _mean_by(grouped, task, config, lambda p, s=steps: int(p["step"]) in s, "lr", read)
            ax.plot(xs, ys, "o-", ms=3, color=colors[config], label=config_name(config))
        _rate_axis(ax, sorted({float(p["lr"]) for key, pts in grouped.items() if key[1] == task for p in pts}))
        _label(
            ax,
            "learning rate",
            f"{label} at the last step (mean over units)",
            f"{task}: {label} against the learning rate",
        )
        _say_if_empty(ax, label)
    return _save(fig, path)


def _say_if_empty(ax, what: str) -> None:
    """A panel none of whose lines has a point (harmful compliance on real text, which has no compliance label)
    says so, instead of an empty frame and legend."""
    if any(len(line.get_xdata()) for line in ax.lines):
        return
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    ax.set_axis_off()
    ax.text(0.5, 0.5, f"{what}: not measured on these points", ha="center", va="center", transform=ax.transAxes)


def _rate_axis(ax, rates: Sequence[float]) -> None:
    """A log axis ticked at the grid's rates alone, written short (2.5e-4): matplotlib's own minor labels on a
    log axis overlap."""
    ax.set_xscale("log")
    ax.set_xticks(rates, [_short(rate) for rate in rates])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _short(rate: float) -> str:
    exponent = math.floor(math.log10(rate))
    return f"{rate / 10**exponent:g}e{exponent}"


def _step_plot(grouped, task: str, path: Path) -> str:
    lrs = sorted({float(p["lr"]) for key, pts in grouped.items() if key[1] == task for p in pts})
    middle = min(lrs, key=lambda lr: abs(math.log(lr) - (math.log(lrs[0]) + math.log(lrs[-1])) / 2))
    configs = _configs(grouped, task)
    colors = _colors(configs)
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    for config in configs:
        xs, ys = _mean_by(grouped, task, config, lambda p: float(p["lr"]) == middle, "step",
                          lambda p: value(p, "utility"))  # fmt: skip
        ax.plot(xs, ys, "o-", ms=3, color=colors[config], label=config_name(config))
    _label(
        ax, "step", "utility (mean over units)", f"{task}: utility against step at lr {middle:g} (the grid's middle)"
    )
    return _save(fig, path)
