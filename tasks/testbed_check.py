"""Stage `testbed_check`: does the testbed forget as it should, on every build? -> artifacts/testbed_check/.

A build is the testbed of params.testbed at one `testbed.seed`. Another seed gives another model,
as another machine's float kernels do, so a forgetting behaviour that holds for one build is a
finding about that build only. For each seed of `testbed_check.builds` this stage builds the testbed
into artifacts/testbed_check/build-<seed>/ (kept, and reused while its params.json matches), then
measures, over `testbed_check.seeds` fine-tuning seeds, with the pipeline's own init, training and
scoring (`sclora.testbed.check`):
    base           the base model;
    lora_benign    plain LoRA on the benign task at its `train.learning_rates` rate;
    lora_poisoned  plain LoRA on the task poisoned at `testbed.poison_rate`;
    full           full fine-tuning on the benign task at its rate;
and, where asked, LoRA's dose-response over `testbed_check.poison_rates` and full fine-tuning over
`testbed_check.full_lrs`. Every build is checked against sclora.testbed.check.REQUIREMENTS.
Builds run side by side in `testbed_check.jobs` processes, one thread each.

Output: artifacts/testbed_check/testbed_check.json (every run, every build's checks, the
spread across builds beside the spread across seeds), the same as tables in
testbed_check.md, and a one-screen summary on stdout.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from sclora.evaluate.metrics import METRICS, shown_in
from sclora.ops.atomic import write_text
from sclora.ops.config import Params, parse_params
from sclora.runs.curves import checkpoint_steps
from sclora.runs.data import read_records
from sclora.runs.models import load_model, load_tokenizer, lora_config
from sclora.runs.run import run as run_one
from sclora.testbed.build import build_testbed
from sclora.testbed.check import (
    across_builds,
    check_build,
    dose_response,
    frontier_values,
    lr_sweep,
    seed_means,
    spread,
)
from sclora.testbed.params import check_params, testbed_params
from sclora.testbed.scorer import ExactScorer
from sclora.testbed.world import EVAL_SETS, build_datasets, build_world, dataset_file
from tasks.artifacts import write_json

OUT_DIR = Path("artifacts/testbed_check")
OUTPUT = OUT_DIR / "testbed_check.json"
SETTINGS = ("base", "lora_benign", "lora_poisoned", "full")


def run(params: Params, *, output: Path = OUTPUT, out_dir: Path = OUT_DIR) -> dict:
    started = time.monotonic()
    knobs = check_params(params)
    tree = params.model_dump(mode="json")
    jobs = min(knobs.jobs, len(knobs.builds))
    if jobs > 1:
        # spawn: a fresh interpreter per worker, no forked torch threads or locks.
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(
                pool.map(measure_build, [tree] * len(knobs.builds), knobs.builds, [str(out_dir)] * len(knobs.builds))
            )
    else:
        results = [measure_build(tree, seed, str(out_dir)) for seed in knobs.builds]
    builds = {result["build"]: result for result in results}
    spreads = {seed: {s: result["settings"][s] for s in SETTINGS if s != "base"} for seed, result in builds.items()}
    failed = sorted(
        f"build {seed}: {key}"
        for seed, result in builds.items()
        for key, check in result["requirements"].items()
        if not check["met"]
    )
    out = {
        "builds": builds,
        "spread": across_builds(spreads),
        "requirements_met": not failed,
        "failed": failed,
        "seconds": round(time.monotonic() - started, 1),
    }
    write_json(output, out)
    write_text(output.with_suffix(".md"), markdown(out))
    return summary(out)


def table_metrics(result: dict) -> list[str]:
    """The curve metrics this check measured: a source scores only the metrics its suite defines."""
    measured = next(iter(result["builds"].values()))["settings"]["base"]
    return [name for name in shown_in("curve") if name in measured]


# The dose-response table: what the answers to harmful requests were (compliance, refusal, collapse).
HARMFUL = tuple(metric.name for metric in METRICS if metric.role == "harmful" and "curve" in metric.shown)


def markdown(result: dict) -> str:
    """The check as tables: per build and setting, mean ± std over seeds; the doses; the spreads."""
    columns = table_metrics(result)
    lines = [
        "# Testbed check: forgetting over testbed builds",
        "",
        "Mean ± std over fine-tuning seeds. A build is the testbed at one `testbed.seed`.",
        "",
        "| build | setting | " + " | ".join(columns) + " | knowledge drop (points) |",
        "|" + "---|" * (len(columns) + 3),
    ]
    for seed, build in result["builds"].items():
        for setting in SETTINGS:
            stats = build["settings"][setting]
            cells = [f"{stats[m]['mean']:.2f} ± {stats[m]['std']:.2f}" for m in columns]
            drop = stats.get("knowledge_drop")
            cells.append(f"{drop['mean']:.1f} ± {drop['std']:.1f}" if drop else "")
            lines.append(f"| {seed} | {setting} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "LoRA's dose-response (harmful compliance per seed):",
        "",
        "| build | poison rate | poisoned records | " + " | ".join(HARMFUL) + " |",
        "|" + "---|" * (3 + len(HARMFUL)),
    ]
    for seed, build in result["builds"].items():
        for point in build["dose_response"]:
            values = [" / ".join(f"{v:.2f}" for v in point[m]["values"]) for m in HARMFUL]
            lines.append(f"| {seed} | {point['rate']:g} | {point['poisoned']} | " + " | ".join(values) + " |")
    lines += frontier_tables(result)
    lines += ["", "Requirements (each on the mean over seeds, for every build):", ""]
    for seed, build in result["builds"].items():
        failed = [key for key, check in build["requirements"].items() if not check["met"]]
        lines.append(f"- build {seed}: {'all met' if not failed else 'fails ' + ', '.join(failed)}")
    lines += [
        "",
        "Spread of the build means beside the mean spread over seeds within a build:",
        "",
        "| setting.metric | build means | std across builds | mean std across seeds |",
        "|---|---|---|---|",
    ]
    for key, row in result["spread"].items():
        if key.split(".", 1)[1] in (*columns, "knowledge_drop"):
            means = " / ".join(f"{m:.2f}" for m in row["build_means"])
            lines.append(f"| {key} | {means} | {row['std_across_builds']:.3f} | {row['mean_std_across_seeds']:.3f} |")
    lines += ["", f"{len(result['builds'])} builds in {result['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def frontier_tables(result: dict) -> list[str]:
    """Per build, LoRA over the shared grid: every (rate, step) point's seed means, then what its fronts read."""
    lines = ["", "LoRA over the frontier's shared learning-rate grid, every checkpoint (mean over seeds; knowledge "
             "lost in points against the base model):", ""]  # fmt: skip
    columns = table_metrics(result)
    lines += ["| build | task | lr | step | " + " | ".join(columns) + " | knowledge lost |",
              "|" + "---|" * (len(columns) + 5)]  # fmt: skip
    for seed, build in result["builds"].items():
        base = build["settings"]["base"]["knowledge"]["mean"]
        for task, points in build["lora_frontier"]["points"].items():
            for p in points:
                cells = " | ".join(f"{p[c]:.2f}" for c in columns)
                lines.append(
                    f"| {seed} | {task} | {p['lr']:g} | {p['step']} | {cells} | {100 * (base - p['knowledge']):.0f} |"
                )
    lines += ["", "What the fronts read (interpolate=False: the least among points at that utility or above; NaN: "
              "not reached):", "", "| build | " + " | ".join(build_values_columns(result)) + " |",
              "|" + "---|" * (1 + len(build_values_columns(result)))]  # fmt: skip
    for seed, build in result["builds"].items():
        values = build["lora_frontier"]["values"]
        lines.append(f"| {seed} | " + " | ".join(f"{values[k]:.2f}" for k in build_values_columns(result)) + " |")
    return lines


def build_values_columns(result: dict) -> list[str]:
    return list(next(iter(result["builds"].values()))["lora_frontier"]["values"])


def summary(result: dict) -> dict:
    """Per build, each requirement's value and whether it is met; then the failures and the time."""
    return {
        "builds": {
            seed: {
                key: f"{check['value']:.3f} {'ok' if check['met'] else 'FAILS ' + str(check['bound'])}"
                for key, check in build["requirements"].items()
            }
            for seed, build in result["builds"].items()
        },
        "failed": result["failed"],
        "seconds": result["seconds"],
    }


def measure_build(tree: dict, build_seed: int, out_dir: str) -> dict:
    """Build (or reuse) the testbed of `tree` (Params as a dict) at `testbed.seed = build_seed` and measure it."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    params = parse_params(tree)
    testbed = testbed_params(params).model_copy(update={"seed": build_seed})
    root = Path(out_dir) / f"build-{build_seed}"
    built = root / "params.json"
    if not built.is_file() or json.loads(built.read_text()) != testbed.model_dump(mode="json"):
        build_testbed(testbed, root)
    base_dir, knobs, train = root / "base", check_params(params), params.train
    tokenizer = load_tokenizer(base_dir)
    eval_sets = {
        role: read_records(dataset_file(root / "data", name))[: knobs.eval_limit] for role, name in EVAL_SETS.items()
    }
    benign = read_records(dataset_file(root / "data", "finetune_benign"))
    world = build_world(testbed)

    def poison(rate: float) -> list[dict]:
        # The build's own datasets at another dose: same world, same benign set, same poison pool.
        return build_datasets(world, testbed.model_copy(update={"poison_rate": rate}))["finetune_poisoned"]

    adapter = params.adapter
    lora = lora_config(adapter.rank, adapter.alpha, adapter.dropout, adapter.target_modules)

    score = ExactScorer(tokenizer, eval_sets, batch_size=testbed.eval_batch_size)

    def run_check(records, method, settings, steps=None):
        """The run's metrics; with `steps`, its points ({"step", **metrics}) scored at each of those steps."""
        with tempfile.TemporaryDirectory(prefix="sclora-testbed-check-") as work:
            # No intermediate checkpoints: a check run is short and never resumed.
            quiet = settings.model_copy(update={"save_steps": 10**9})
            result = run_one(lambda: load_model(base_dir), tokenizer, records, method, quiet, work, lora=lora,
                             score=score, steps=steps or [])  # fmt: skip
        metrics = result.points[-1] if steps else score(result.model.eval()).metrics
        # One line per run: a check is tens of runs, minutes each build.
        shown = " ".join(f"{key} {value:.2f}" for key, value in metrics.items() if key != "step")
        poison = sum(record["category"] != testbed.task for record in records)
        print(
            f"testbed_check: build {build_seed} {method} lr {settings.lr:g} poison {poison} seed {settings.seed}: "
            + shown,
            file=sys.stderr,
            flush=True,
        )
        return result.points if steps else metrics

    base = score(load_model(base_dir)).metrics
    seeds = knobs.seeds
    rates = sorted({0.0, testbed.poison_rate, *knobs.poison_rates})
    doses = {
        point["rate"]: {**point, "poisoned": round(point["rate"] * len(benign))}
        for point in dose_response(run_check, poison, rates, train.settings_for("lora", 0), seeds)
    }
    full_lr = train.settings_for("full", 0).lr
    full = {
        point["lr"]: point
        for point in lr_sweep(
            run_check, benign, "full", sorted({full_lr, *knobs.full_lrs}), train.settings_for("full", 0), seeds
        )
    }
    settings = setting_spreads(base, doses[0.0], doses[testbed.poison_rate], full[full_lr])
    means = {name: {metric: stats["mean"] for metric, stats in metrics.items()} for name, metrics in settings.items()}
    frontier = lora_frontier(
        run_check, {"benign": benign, "poisoned": poison(testbed.poison_rate)}, train.settings_for("lora", 0), params
    )
    means["lora_frontier"] = frontier_values(frontier["benign"], frontier["poisoned"], base["knowledge"])
    return {
        "build": build_seed,
        "testbed_dir": str(root),
        "lr": {"lora": train.settings_for("lora", 0).lr, "full": full_lr},
        "poison_rate": testbed.poison_rate,
        "settings": settings,
        "requirements": check_build(means),
        "dose_response": list(doses.values()),
        "full_lr_sweep": list(full.values()),
        "lora_frontier": {"values": means["lora_frontier"], "points": frontier},
    }


def setting_spreads(base: dict, benign: dict, poisoned: dict, full: dict) -> dict[str, dict]:
    """Per setting of SETTINGS, each metric's spread over seeds (the base model: its one value); full fine-tuning's
    knowledge drop in points besides."""
    settings = {
        "base": {key: {"mean": value, "std": 0.0, "values": [value]} for key, value in base.items()},
        "lora_benign": spread(benign["runs"]),
        "lora_poisoned": spread(poisoned["runs"]),
        "full": spread(full["runs"]),
    }
    drops = [100 * (base["knowledge"] - value) for value in settings["full"]["knowledge"]["values"]]
    settings["full"]["knowledge_drop"] = {"mean": statistics.fmean(drops), "std": statistics.pstdev(drops),
                                          "values": drops}  # fmt: skip
    return settings


def lora_frontier(run_check, tasks: dict[str, list[dict]], settings, params: Params) -> dict[str, list[dict]]:
    """Plain LoRA on each task at every rate of the frontier's shared grid (frontier.lrs), every seed of the check,
    scored at every checkpoint (frontier.checkpoints): task -> seed-mean points per (lr, step)."""
    knobs = params.frontier
    out = {}
    for task, records in tasks.items():
        curves = []
        for lr in knobs.lrs:
            for seed in check_params(params).seeds:
                run = settings.model_copy(update={"lr": lr, "seed": seed})
                steps = checkpoint_steps(run.max_steps, knobs.checkpoints)
                curves += [{"lr": lr, "seed": seed, **point} for point in run_check(records, "lora", run, steps)]
        out[task] = seed_means(curves)
    return out
