"""Flow `retrain`: a new data version -> pipeline -> register -> promote only when the gates pass.

A data version is a revision (tag, branch, commit) of the data registry that the
workspace's data came from with `dvc import <registry> <path> -o <file>`. Retraining runs
`dvc update --rev <data_version>` on those imports, so DVC records the new data in their
`.dvc` files and reruns exactly the stages that read it; then the pipeline, whose
`register` stage names a `candidate`; then `promote` moves `champion` to it only when
params' `tracking.gates` pass. Point `data.sources` at the imported files to use them.
With `select.in_retrain`, the `select_beta` flow takes the pipeline's place: the candidate is the beta that
learns most within `select.forgetting_budget` (flows/select_beta.py), not the best of a fixed beta grid.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.pipeline import pipeline
from flows.select_beta import select_beta
from flows.stages import PARAMS_FILE, run_logged, stage_env, store_uri
from sclora.ops import tracking
from sclora.ops.config import load_params
from sclora.ops.registry import promote
from tasks.artifacts import REGISTRY


def data_imports(workdir: str | Path = ".") -> list[str]:
    """The `.dvc` files of the workspace that import data from another repository (`dvc import`)."""
    from dvc.repo import Repo

    with Repo(str(workdir)) as repo:
        return sorted(os.path.relpath(stage.path, repo.root_dir) for stage in repo.index.stages if stage.is_repo_import)


@task(task_run_name="update {dvc_file}", retries=2, retry_delay_seconds=10, cache_policy=NONE)
def update_import(dvc_file: str, data_version: str, workdir: str) -> str:
    """`dvc update --rev <data_version> <dvc_file>`: the import now points at that data version."""
    command = [sys.executable, "-m", "dvc", "update", "--rev", data_version, dvc_file]
    run_logged(command, Path(workdir), stage_env(), get_run_logger(), f"dvc update {dvc_file}")
    return dvc_file


@flow(name="sclora-retrain")
def retrain(
    data_version: str,
    params_file: str = PARAMS_FILE,
    workdir: str = ".",
    retries: int = 1,
    retry_delay_seconds: float = 5.0,
    push: bool = False,
) -> dict:
    """Retrain on `data_version`; returns the candidate, whether it became champion, and why.

    With `push` (a work-pool run) the pipeline's outputs and workspace go to the team's remotes.
    """
    root = Path(workdir).resolve()
    imports = data_imports(root)
    if not imports:
        raise ValueError(f"{root}: no `dvc import`ed data to move to version {data_version} (see flows/retrain.py)")
    for dvc_file in imports:
        update = update_import.with_options(retry_delay_seconds=retry_delay_seconds)
        update(dvc_file, data_version, str(root))
    params = load_params(root / params_file if not Path(params_file).is_absolute() else params_file)
    if params.select.in_retrain:
        if push:
            raise ValueError("select.in_retrain: a select_beta retrain runs locally; push is not supported with it")
        selected = select_beta(params_file=params_file, workdir=str(root), retries=retries)
        decision = {
            "data_version": data_version,
            "imports": imports,
            "parent_run_id": selected["parent_run_id"],
            "model": selected["model"],
            "candidate": selected["candidate"],
            "version": selected["version"],
        }
        missing = f"no beta within the forgetting budget: {selected['message']}"
    else:
        result = pipeline(
            params_file=params_file,
            workdir=str(root),
            retries=retries,
            retry_delay_seconds=retry_delay_seconds,
            push=push,
        )
        registry = json.loads((root / REGISTRY).read_text(encoding="utf-8"))
        decision = {"data_version": data_version, "imports": imports, "parent_run_id": result["parent_run_id"],
                    "model": registry["model"], "candidate": registry["candidate"],
                    "version": registry["candidate_version"]}  # fmt: skip
        missing = "no run within the forgetting budget: no candidate"
    if decision["version"] is None:
        return {**decision, "promoted": False, "reasons": [missing]}
    params = load_params(root / PARAMS_FILE)
    tracking.use_store(store_uri(params, root))
    promoted, reasons = promote(decision["model"], decision["version"], params.tracking.gates)
    get_run_logger().info("%s version %s: %s (%s)", decision["model"], decision["version"],
                          "champion" if promoted else "not promoted", "; ".join(reasons))  # fmt: skip
    return {**decision, "promoted": promoted, "reasons": reasons}
