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

import json
from pathlib import Path

import pyarrow.parquet as pq

from sclora.method.gather import MANIFEST
from sclora.method.table import BY_NAME, has_adapter
from sclora.ops.config import Params
from tasks.artifacts import ARTIFACTS, RunSpec, all_runs, capture_dir, run_settings, write_json

PLAN = ARTIFACTS / "plan"
# The captures a run's init can read (its row's `reads`); the solved subspaces are a dvc.yaml dependency instead.
CAPTURES = ("pos_covariance", "neg_covariance")


def run(params: Params) -> dict:
    runs = all_runs(params)
    PLAN.mkdir(parents=True, exist_ok=True)
    for stale in set(PLAN.glob("*.json")) - {plan_path(spec) for spec in runs}:
        stale.unlink()
    for spec in runs:
        write_json(plan_path(spec), run_inputs(params, spec))
    return {"runs": len(runs), "dir": str(PLAN)}


def plan_path(spec: RunSpec) -> Path:
    return PLAN / f"{spec.name}.json"


def run_inputs(params: Params, spec: RunSpec) -> dict:
    """Everything in `params` (and, for CorDA, the capture) that decides the result of run `spec`."""
    data = params.data
    sources = sorted({data.finetune[spec.task], *data.eval.values()})
    inputs = {
        "run": spec.name, "task": spec.task, "method": spec.method, "beta": spec.beta, "seed": spec.seed,
        "train": run_settings(params, spec).model_dump(mode="json"),
        "model": params.model.model_dump(mode="json"),
        "data": {"task_source": data.finetune[spec.task], "eval": dict(data.eval),
                 "sources": {name: data.sources[name].model_dump(mode="json") for name in sources}},
        "eval": params.eval.model_dump(mode="json"),
    }  # fmt: skip
    if has_adapter(spec.method):
        inputs["adapter"] = params.adapter.model_dump(mode="json")
    reads = BY_NAME[spec.method].reads
    if reads in CAPTURES:
        inputs["capture"] = capture_hashes(capture_dir(reads, spec.task))
    elif reads == "task_batches":  # the first capture.samples_pos of the task, capture.batch_size at a time
        inputs["task_batches"] = params.capture.model_dump(mode="json", include={"samples_pos", "batch_size"})
    return inputs


def capture_hashes(directory: Path) -> list[str]:
    """The sha256 of every shard of the capture in `directory` (empty when there is none yet)."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return []
    return sorted(pq.read_table(manifest, columns=["sha256"]).column("sha256").to_pylist())


def check_plan(params: Params, spec: RunSpec) -> None:
    """Fail when the run's plan file exists but says other than the params: DVC would not know what ran."""
    path = plan_path(spec)
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")) != run_inputs(params, spec):
        raise ValueError(f"{path} is stale against params.yaml: run the plan stage first (dvc repro plan)")
