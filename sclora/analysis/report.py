"""The comparison report: results table, means with 95 % intervals, paired differences against LoRA, the claims'
verdicts by the decision rule, Pareto front, plots.

`write_report(rows, out_dir, ...)` writes `results.csv` (one row per run, sclora.analysis.results), `items.csv.gz` (the
runs' per-item scores), `verdicts.json` (sclora.analysis.claims.judgement: what `sclora judge results.csv` prints),
`report.md` and PNGs into `out_dir`, atomically (a temporary directory renamed into place). Intervals are those
of sclora.analysis.intervals: seeds and items both vary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sclora.analysis.claims import judgement, verdict_lines  # noqa: E402
from sclora.analysis.decision import Rule  # noqa: E402
from sclora.analysis.fronts import nondominated as pareto_front  # noqa: E402  (one front for both reports)
from sclora.analysis.intervals import Interval, difference, mean  # noqa: E402
from sclora.analysis.results import (  # noqa: E402
    COLUMNS,
    FORGETTING_COLUMNS,
    ITEMS_FILE,
    METRICS,
    NUMERIC,
    SHARES,
    Results,
    config_runs,
    number,
    write_items,
    write_table,
)
from sclora.evaluate.metrics import AXES, direction, shown_in  # noqa: E402
from sclora.method.forecast import rank_correlation, share_at  # noqa: E402
from sclora.ops.atomic import atomic_dir  # noqa: E402

FORGETTING_METRICS = tuple(FORGETTING_COLUMNS)
# What "preserved" means on each trade-off panel: (metric, +1 when higher is better, -1 when lower is).
PRESERVATION = {axis: (metric, direction(metric)) for axis, metric in AXES.items()}
SWEPT_METHOD = "sclora"  # the method with a beta axis
BASELINE = "lora"  # every other method is compared with it seed by seed
# The metrics compared against the baseline (the comparison's utility, preservation and collapse).
PAIRED = shown_in("paired")
SPECTRA_LAYERS = 4


def write_report(
    rows: Sequence[Mapping],
    out_dir: str | Path,
    loss_histories: Mapping[str, Sequence[Mapping]] | None = None,
    spectra: Mapping[str, Mapping[float, Sequence[float]]] | None = None,
    forecast: Mapping[str, Mapping] | None = None,
    items: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    rule: Rule | None = None,
) -> Path:
    """Write results.csv, items.csv.gz, verdicts.json, report.md and the PNGs into `out_dir` (replaced as a whole).

    `rows`: one dict per run with the keys in COLUMNS (missing metrics: None; `items` is filled in).
    `items`: run -> metric -> item -> score (sclora.evaluate.items). `rule`: the decision rule's numbers.
    `loss_histories`: run -> [{"step", "loss"}, ...]. `spectra`: layer -> {beta: eigenvalues
    of M(beta), descending}; the first few layers are plotted. `forecast`: task -> the forecast stage's
    table (sclora.method.forecast.energy_forecast), drawn against beta and checked against the measured forgetting.
    """
    rows = [_row(row, i) for i, row in enumerate(rows)]
    if not rows:
        raise ValueError("report: no runs to report")
    items = {run: scores for run, scores in (items or {}).items() if scores}
    for row in rows:
        row["items"] = ITEMS_FILE if row["run"] in items else ""
    results = Results(rows, {run: {m: dict(s) for m, s in scores.items()} for run, scores in items.items()})
    verdicts = judgement(results, rule)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as staging:
        write_table(rows, staging / "results.csv")
        write_items(items, staging / ITEMS_FILE)
        (staging / "verdicts.json").write_text(json.dumps(verdicts, indent=2) + "\n", encoding="utf-8")
        groups = _groups(results)
        plots = _tradeoff_plots(groups, staging)
        plots += _beta_plots(groups, staging)
        if loss_histories:
            plots.append(_loss_plot(rows, loss_histories, staging / "loss.png"))
        if spectra:
            plots.append(_spectra_plot(spectra, staging / "spectra.png"))
        if forecast:
            plots.append(_forecast_plot(forecast, groups, staging / "forecast.png"))
        text = _markdown(groups, results, plots, verdicts, _forecast_lines(forecast, groups) if forecast else [])
        (staging / "report.md").write_text(text, encoding="utf-8")
    return out_dir


def _row(row: Mapping, index: int) -> dict:
    missing = [key for key in ("run", "task", "method") if row.get(key) in (None, "")]
    if missing:
        raise ValueError(f"report row {index}: missing {', '.join(missing)}")
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"report row {row['run']}: unknown column(s) {', '.join(sorted(unknown))}")
    clean = {key: row.get(key) for key in COLUMNS}
    for key in NUMERIC:
        clean[key] = number(clean[key], f"report row {row['run']}.{key}")
    clean["build"] = "" if clean["build"] is None else str(clean["build"])
    clean["seed"] = int(clean["seed"]) if clean["seed"] not in (None, "") else clean["seed"]
    return clean


def _groups(results: Results) -> list[dict]:
    """Mean and 95 % interval (seeds and items) per (task, method, beta), in a stable order."""
    keyed: dict[tuple, list[dict]] = {}
    for row in results.rows:
        keyed.setdefault((row["task"], row["method"], row["beta"]), []).append(row)
    groups = []
    for (task, method, beta), members in keyed.items():
        config_beta = None if math.isnan(beta) else beta
        intervals = {metric: mean(config_runs(results, task, method, config_beta, metric),
                                  share=metric in SHARES).interval()
                     for metric in METRICS}  # fmt: skip
        groups.append({"task": task, "method": method, "beta": beta, "seeds": len(members), "intervals": intervals})
    groups.sort(key=lambda g: (g["task"], g["method"], -1.0 if math.isnan(g["beta"]) else g["beta"]))
    for task in {g["task"] for g in groups}:
        members = [g for g in groups if g["task"] == task]
        for panel, (metric, sign) in PRESERVATION.items():
            points = [(g["intervals"]["utility"].mean, sign * g["intervals"][metric].mean) for g in members]
            for i in pareto_front(points):
                members[i].setdefault("pareto", []).append(panel)
    return groups


def _label(group: dict) -> str:
    beta = group["beta"]
    return group["method"] if math.isnan(beta) else f"{group['method']} b={beta:g}"


def _colors(groups: list[dict]) -> dict[str, tuple]:
    methods = sorted({g["method"] for g in groups})
    cmap = plt.get_cmap("tab10")
    return {method: cmap(i % 10) for i, method in enumerate(methods)}


def _error_bar(intervals: list[Interval]) -> list[list[float]]:
    """Matplotlib's asymmetric error bars for 95 % intervals: [below, above]; none where a bound is NaN (1 seed)."""
    below = [0.0 if math.isnan(i.low) else i.mean - i.low for i in intervals]
    above = [0.0 if math.isnan(i.high) else i.high - i.mean for i in intervals]
    return [below, above]


def _tradeoff_plots(groups: list[dict], out: Path) -> list[str]:
    colors = _colors(groups)
    names = []
    for task in sorted({g["task"] for g in groups}):
        members = [g for g in groups if g["task"] == task]
        fig, axes = plt.subplots(1, len(PRESERVATION), figsize=(6 * len(PRESERVATION), 4.8), squeeze=False)
        for ax, (panel, (metric, sign)) in zip(axes[0], PRESERVATION.items(), strict=True):
            points = []
            for g in members:
                x, y = g["intervals"]["utility"].mean, g["intervals"][metric].mean
                points.append((x, y))
                if math.isnan(x) or math.isnan(y):
                    continue
                # beta shades the swept method so that its sweep reads as a path
                alpha = 1.0 if math.isnan(g["beta"]) else 0.35 + 0.65 * g["beta"]
                ax.errorbar(
                    x,
                    y,
                    xerr=_error_bar([g["intervals"]["utility"]]),
                    yerr=_error_bar([g["intervals"][metric]]),
                    fmt="o",
                    color=colors[g["method"]],
                    alpha=alpha,
                    capsize=3,
                    label=g["method"],
                )
                if not math.isnan(g["beta"]):  # colours name the methods; only the sweep needs its beta written
                    ax.annotate(f"b={g['beta']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            front = pareto_front([(x, sign * y) for x, y in points])
            if front:
                ax.plot(
                    [points[i][0] for i in front],
                    [points[i][1] for i in front],
                    "k--",
                    lw=1,
                    label="Pareto front",
                    zorder=0,
                )
                ax.scatter(
                    [points[i][0] for i in front],
                    [points[i][1] for i in front],
                    s=160,
                    facecolors="none",
                    edgecolors="k",
                    zorder=3,
                )
            handles, labels = ax.get_legend_handles_labels()
            unique = dict(zip(labels, handles, strict=True))
            ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best")
            ax.set_xlabel("utility (task metric)")
            if sign < 0:  # up is preserved on every panel
                ax.invert_yaxis()
            ax.set_ylabel(f"{panel} preserved ({metric}{', lower is better' if sign < 0 else ''})")
            ax.set_title(f"{task}: utility vs {panel}")
            ax.grid(alpha=0.3)
        names.append(_save(fig, out / f"tradeoff_{task}.png"))
    return names


def _save(fig, path: Path) -> str:
    """Lay out, write and close a figure; returns its file name."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _beta_plots(groups: list[dict], out: Path) -> list[str]:
    colors = _colors(groups)
    names = []
    for task in sorted({g["task"] for g in groups}):
        members = [g for g in groups if g["task"] == task]
        swept = sorted(
            (g for g in members if g["method"] == SWEPT_METHOD and not math.isnan(g["beta"])), key=lambda g: g["beta"]
        )
        if not swept:
            continue
        metrics = [m for m in METRICS if any(not math.isnan(g["intervals"][m].mean) for g in members)]
        cols = 4
        rows_needed = math.ceil(len(metrics) / cols)
        fig, axes = plt.subplots(rows_needed, cols, figsize=(4 * cols, 3.2 * rows_needed), squeeze=False)
        for ax, metric in zip(axes.flat, metrics, strict=False):
            betas = [g["beta"] for g in swept]
            means = [g["intervals"][metric].mean for g in swept]
            ax.errorbar(
                betas,
                means,
                yerr=_error_bar([g["intervals"][metric] for g in swept]),
                fmt="o-",
                color=colors[SWEPT_METHOD],
                capsize=3,
                label=SWEPT_METHOD,
            )
            for g in members:
                if g["method"] != SWEPT_METHOD and not math.isnan(g["intervals"][metric].mean):
                    ax.axhline(g["intervals"][metric].mean, color=colors[g["method"]], ls="--", lw=1, label=_label(g))
            ax.set_title(metric, fontsize=9)
            ax.set_xlabel("beta")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(metrics) :]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower right", fontsize=8, ncol=2)
        fig.suptitle(f"{task}: {SWEPT_METHOD} over beta (dashed: other methods)")
        names.append(_save(fig, out / f"beta_{task}.png"))
    return names


def _loss_plot(rows: list[dict], histories: Mapping[str, Sequence[Mapping]], path: Path) -> str:
    by_run = {row["run"]: row for row in rows}
    tasks = sorted({row["task"] for row in rows if row["run"] in histories})
    colors = _colors([{"method": row["method"]} for row in rows])
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(6 * max(len(tasks), 1), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=False):
        for run, history in histories.items():
            row = by_run.get(run)
            if row is None or row["task"] != task or not history:
                continue
            beta = "" if math.isnan(row["beta"]) else f" b={row['beta']:g}"
            shade = 0.8 if math.isnan(row["beta"]) else 0.3 + 0.7 * row["beta"]  # as on the trade-off plot
            ax.plot(
                [h["step"] for h in history],
                [h["loss"] for h in history],
                color=colors[row["method"]],
                lw=1,
                alpha=shade,
                label=f"{row['method']}{beta}",
            )
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), fontsize=7)
        ax.set_title(f"{task}: training loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _spectra_plot(spectra: Mapping[str, Mapping[float, Sequence[float]]], path: Path) -> str:
    layers = list(spectra)[:SPECTRA_LAYERS]
    fig, axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 3.8), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, layer in zip(axes[0], layers, strict=True):
        for beta, values in sorted(spectra[layer].items()):
            values = np.asarray(values, dtype=float)
            ax.plot(np.arange(1, values.size + 1), values, "o-", ms=3, color=cmap(float(beta)), label=f"beta={beta:g}")
        ax.axhline(0.0, color="k", lw=0.5)
        largest = max((float(np.abs(v).max()) for v in spectra[layer].values() if len(v)), default=1.0) or 1.0
        ax.set_yscale("symlog", linthresh=1e-3 * largest)  # M(beta) is indefinite: both signs, many decades
        ax.set_title(layer, fontsize=8)
        ax.set_xlabel("eigenvalue index")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("eigenvalue of M(beta)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _cell(interval) -> str:
    """mean [low, high] (95 %), or the mean alone from one seed."""
    if math.isnan(interval.mean):
        return "-"
    if math.isnan(interval.low):
        return f"{interval.mean:.3f}"
    return f"{interval.mean:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def _paired_lines(groups: list[dict], results: Results) -> list[str]:
    """Per task, every method minus the baseline on the seeds and items both have; * where the interval
    excludes 0 (a description: the claims' verdicts are the decision rule's, above)."""
    lines = [
        "",
        f"## Paired against {BASELINE} (same seeds, same items)",
        "",
        f"Mean difference (method - {BASELINE}) with its 95 % interval (sclora.analysis.intervals: seeds and items); "
        "* where the interval excludes 0. With one seed there is no interval.",
        "",
    ]
    header = ["task", "method", "beta", "seeds", *PAIRED]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task in sorted({g["task"] for g in groups}):
        if not any(g["task"] == task and g["method"] == BASELINE for g in groups):
            continue
        for g in groups:
            if g["task"] != task or g["method"] == BASELINE:
                continue
            beta = None if math.isnan(g["beta"]) else g["beta"]
            diffs = [
                difference(config_runs(results, task, g["method"], beta, m),
                           config_runs(results, task, BASELINE, None, m), share=m in SHARES).interval()
                for m in PAIRED
            ]  # fmt: skip
            cells = []
            for d in diffs:
                if math.isnan(d.mean):
                    cells.append("-")
                elif math.isnan(d.low):
                    cells.append(f"{d.mean:+.3f}")
                else:
                    cells.append(f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]{' *' if d.excludes_zero else ''}")
            shown_beta = "-" if beta is None else f"{beta:g}"
            seeds = max(d.n for d in diffs)
            lines.append("| " + " | ".join([task, g["method"], shown_beta, str(seeds), *cells]) + " |")
    return lines


def _claim_lines(verdicts: dict) -> list[str]:
    if not verdicts["claims"]:
        return []
    return ["", "## The paper's claims", "", *verdict_lines(verdicts)]


def _swept(groups: list[dict], task: str) -> list[dict]:
    swept = [g for g in groups if g["task"] == task and g["method"] == SWEPT_METHOD and not math.isnan(g["beta"])]
    return sorted(swept, key=lambda g: g["beta"])


def _forecast_plot(forecast: Mapping[str, Mapping], groups: list[dict], path: Path) -> str:
    tasks = sorted(forecast)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        table = forecast[task]
        ax.plot(table["betas"], table["pos_share"], "o-", ms=3, label="D+ (task) energy in the subspace")
        ax.plot(table["betas"], table["neg_share"], "s-", ms=3, label="D- (preserved) energy in the subspace")
        for g in _swept(groups, task):
            ax.axvline(g["beta"], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("beta")
        ax.set_ylabel("share of output energy (mean over layers)")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{task}: forecast from the capture (dotted: betas trained)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _forecast_lines(forecast: Mapping[str, Mapping], groups: list[dict]) -> list[str]:
    """Does the forecast predict? Spearman between its D- share and the measured forgetting over sclora's betas."""
    lines = [
        "",
        "## The forecast against measurement",
        "",
        "Spearman rank correlation (scipy) over sclora's betas between the forecast's D- energy share and the "
        "mean measured forgetting: +1 means the forecast orders the betas exactly as the measurements do.",
        "",
        "| task | betas | " + " | ".join(FORGETTING_METRICS) + " |",
        "|---|---|" + "---|" * len(FORGETTING_METRICS),
    ]
    for task in sorted(forecast):
        swept = _swept(groups, task)
        shares = {g["beta"]: share_at(forecast[task], "neg_share", g["beta"]) for g in swept}
        cells = []
        for metric in FORGETTING_METRICS:
            result = rank_correlation(shares, {g["beta"]: g["intervals"][metric].mean for g in swept})
            cells.append("-" if result is None else f"{result['rho']:+.2f} (p {result['p']:.2f})")
        lines.append(f"| {task} | {len(swept)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "'-': fewer than 3 betas, or no spread. p: exact (every pairing). The D- share falls with beta by "
        "construction, so over betas this is what any decreasing function of beta would score: it orders "
        "betas, and says nothing of whether the forecast predicts across builds, ranks or preserved sets "
        "at one beta (this protocol varies none of them)."
    )
    return lines


def rate_lines(results: Results) -> list[str]:
    """What the table's rows are NOT: a comparison at matched utility. Each configuration ran at one learning rate;
    where the rates differ, a difference between rows is also one of learning-rate scale, and the lines say so."""
    rates: dict[str, set[float]] = {}
    for row in results.rows:
        beta = "" if math.isnan(row["beta"]) else f" {row['beta']:g}"
        if not math.isnan(row["lr"]):
            rates.setdefault(f"{row['method']}{beta}", set()).add(row["lr"])
    if not rates:
        return []
    shown = ", ".join(f"{name} {'/'.join(f'{r:g}' for r in sorted(lrs))}" for name, lrs in rates.items())
    if len(set().union(*rates.values())) == 1:
        return ["", f"Learning rate: {shown}, the same for every row: a comparison at one rate, not at matched "
                "utility (`make protocol` reads every configuration's front over one grid of rates)."]  # fmt: skip
    return ["", f"**The rows ran at different learning rates** ({shown}): one rate per configuration. A difference "
            "between rows is therefore also one of learning-rate scale: on one shared grid every method first learns "
            "the task and then forgets, and where that starts is set by its rate (docs/protocol.md). The comparison "
            "at matched utility, on each configuration's learning-forgetting front over one grid of rates, is "
            "`make protocol` (artifacts/frontier/report/report.md)."]  # fmt: skip


def _markdown(groups: list[dict], results: Results, plots: list[str], verdicts: dict, forecast_lines: list[str]) -> str:
    shown = [m for m in METRICS if any(not math.isnan(g["intervals"][m].mean) for g in groups)]
    lines = ["# SC-LoRA comparison", ""]
    lines.append("Mean [95 % interval] over seeds per task, method and beta. Forgetting: lower is better.")
    axes = " / ".join(f"{panel} ({metric})" for panel, (metric, _) in PRESERVATION.items())
    lines.append(f"Pareto: not dominated on utility vs {axes}.")
    lines.append("")
    header = ["task", "method", "beta", "seeds", *shown, "Pareto"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for g in groups:
        beta = "-" if math.isnan(g["beta"]) else f"{g['beta']:g}"
        cells = [_cell(g["intervals"][m]) for m in shown]
        lines.append(
            "| "
            + " | ".join([g["task"], g["method"], beta, str(g["seeds"]), *cells, ", ".join(g.get("pareto", [])) or ""])
            + " |"
        )
    lines += rate_lines(results)
    lines += _claim_lines(verdicts)
    lines += _paired_lines(groups, results)
    lines += forecast_lines
    lines += ["", "## Pareto-optimal configurations", ""]
    for task in sorted({g["task"] for g in groups}):
        for panel in PRESERVATION:
            best = [_label(g) for g in groups if g["task"] == task and panel in g.get("pareto", [])]
            lines.append(f"- {task}, utility vs {panel}: {', '.join(best) if best else 'none (metric missing)'}")
    lines += ["", "## Plots", "", "Error bars: the 95 % interval over seeds (none for a single seed).", ""]
    lines += [f"- [{name}]({name})\n\n  ![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"
