"""Stage `register`: the pipeline's best adapter becomes a version of params.tracking.registered_model.

The candidate is the run with the highest utility among those whose every forgetting delta
stays within tracking.gates.forgetting_budget (`within_budget`: the rule `promote` checks before
moving `champion`); among runs of equal utility, the one that forgets least (the smallest sum of its
budgeted deltas). Its plain-LoRA export (on the ORIGINAL base) is logged into its MLflow child
run and registered with alias `candidate`, its metrics as version tags and, in its description, beside the
base model's (artifacts/eval/base) and the champion's; registering the
same run again returns its existing version, so re-runs add nothing. `full` runs are not
candidates: they are not adapters, and the registry holds adapters for the base model.

When no run is within budget, nothing is registered and no version holds `candidate`; one line
(on stderr, and as `message` in the output) names the run closest to the budget and by how much it misses.
Output: artifacts/registry.json (the candidate, its version, and every run within budget).
"""

from __future__ import annotations

import sys

from sclora.evaluate.metrics import BY_NAME as SUITE_METRICS
from sclora.method.table import has_adapter
from sclora.ops import tracking
from sclora.ops.config import Params
from sclora.ops.registry import CANDIDATE, drop_alias, overshoot, register_adapter, within_budget
from tasks.artifacts import EVAL_BASE, METRICS, REGISTRY, RUN_FILE, all_runs, read_json, write_json

# What a registered version is tagged with: every metric and the forgetting deltas.
SUMMARY_KEYS = (*SUITE_METRICS, "forgetting")


def run(params: Params) -> dict:
    runs = [spec for spec in all_runs(params) if has_adapter(spec.method)]
    outputs = {  # every run's outputs read before the store is touched: a missing one registers nothing
        spec.name: (read_json(spec.dir / RUN_FILE, f"run {spec.name}"),
                    read_json(spec.dir / "eval" / METRICS, f"metrics of run {spec.name}"))
        for spec in runs
    }  # fmt: skip
    budget = params.tracking.gates.forgetting_budget
    eligible = {
        spec.name: outputs[spec.name][1].get("utility", float("-inf"))
        for spec in runs
        if within_budget(outputs[spec.name][1], budget)
    }
    candidate = best_within_budget({name: outputs[name][1] for name in eligible}, budget)
    base = read_json(EVAL_BASE / METRICS, "metrics of the base model") if candidate is not None else None
    tracking.use_store(params.tracking.uri)
    name = params.tracking.registered_model
    version = None
    if candidate is not None:
        spec = next(spec for spec in runs if spec.name == candidate)
        summary, metrics = outputs[candidate]
        shown = {key: metrics[key] for key in SUMMARY_KEYS if key in metrics}
        tags = {"run": spec.name, "task": spec.task, "method": spec.method, "seed": str(spec.seed),
                "beta": "none" if spec.beta is None else str(spec.beta)}  # fmt: skip
        # The same trained run registered again (a re-run of this stage) keeps its version.
        version = register_adapter(spec.dir / "export", name, shown, tags, run_id=summary["mlflow_run_id"], base=base)
    else:
        drop_alias(name, CANDIDATE)
    registry = {
        "model": name, "candidate": candidate, "candidate_version": version, "within_budget": sorted(eligible),
        "utility": dict(sorted(eligible.items(), key=lambda item: -item[1])),
    }  # fmt: skip
    if candidate is None:
        registry["closest"] = closest_to_budget({spec.name: outputs[spec.name][1] for spec in runs}, budget)
        registry["message"] = _nothing_within(registry["closest"], budget)
        print(f"register: {registry['message']}", file=sys.stderr)
    write_json(REGISTRY, registry)
    return registry


def best_within_budget(runs: dict[str, dict], budget: dict[str, float]) -> str | None:
    """The highest-utility run of `runs` (all within budget); of those tied, the smallest sum of budgeted
    forgetting deltas, then the first name. None without runs."""
    if not runs:
        return None

    def rank(name: str) -> tuple:
        forgotten = sum(runs[name]["forgetting"][metric] for metric in budget)
        return -runs[name].get("utility", float("-inf")), forgotten, name

    return min(runs, key=rank)


def closest_to_budget(runs: dict[str, dict], budget: dict[str, float]) -> dict | None:
    """The run whose largest overshoot is smallest: {"run", "overshoot": {metric: amount}}; None without runs."""
    if not runs:
        return None
    name = min(runs, key=lambda run: (max(overshoot(runs[run], budget).values(), default=0.0), run))
    return {"run": name, "overshoot": overshoot(runs[name], budget)}


def _nothing_within(closest: dict | None, budget: dict[str, float]) -> str:
    asked = ", ".join(f"{metric} <= {limit:g}" for metric, limit in sorted(budget.items()))
    if closest is None:
        return f"no adapter run to register (forgetting budget {asked})"
    misses = ", ".join(f"{metric} by {amount:.3f}" for metric, amount in sorted(closest["overshoot"].items()))
    return (
        f"no run within the forgetting budget ({asked}); registered nothing. "
        f"Closest: {closest['run']}, over on {misses}"
    )
