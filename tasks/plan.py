"""Stage `plan`: one file per run, artifacts/plan/<run>.json, holding what in the params decides that run.

Why a stage: DVC reruns a stage when a params key it declares changes, and a key is a whole
section or one fixed path. Declaring `train` made every train item rerun when a seed was added
to `train.seeds` or one method's rate changed. Each train item instead depends on its own plan
file: `plan` rewrites them all whenever the params change (no model, no data: cheap), and DVC, which
compares file contents, reruns only the items whose file changed. Adding a seed, a method or a
beta adds files and leaves the others as they were.

A run whose init reads a capture (CorDA, LoRA-Null: its row's `reads`) has the shard hashes of that capture in its
plan, so a new capture reruns it; the data-free methods do not read the capture and do not depend on it.
"""

from __future__ import annotations

from sclora.ops.config import Params
from tasks.artifacts import PLAN, all_runs, plan_path, run_inputs, write_json


def run(params: Params) -> dict:
    runs = all_runs(params)
    PLAN.mkdir(parents=True, exist_ok=True)
    for stale in set(PLAN.glob("*.json")) - {plan_path(spec) for spec in runs}:
        stale.unlink()
    for spec in runs:
        write_json(plan_path(spec), run_inputs(params, spec))
    return {"runs": len(runs), "dir": str(PLAN)}
