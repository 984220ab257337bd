"""Flow `sweep`: a grid of params overrides, one DVC experiment (or one flow run) per point.

Locally every point is queued as a DVC experiment (`dvc exp run --queue -S key=value ...`)
and the queue is run (`dvc exp run --run-all`): DVC runs each in its own temporary
workspace, restores unchanged stages from its run cache, and keeps going when a point
fails. On a work pool each point is one run of the `pipeline` deployment, each worker in
its own checkout sharing stage outputs through the DVC remote: the sweep first runs the
stages every point shares (capture and the base model's evaluation) in its own checkout and
pushes them as an experiment (flows/remotes.py); each point's run clones that commit and
`dvc pull`s their outputs (infra/prefect.yaml), so DVC finds them up to date.
"""

from __future__ import annotations

import itertools
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.remotes import push_results, start_at
from flows.stages import PARAMS_FILE, StageFailed, prepare_params, run_logged, stage_env
from sclora.ops.config import load_params

PIPELINE_FLOW = "sclora-pipeline"
SHARED_STAGES = ("capture", "evaluate_base")  # with everything upstream: what every point of a pool sweep reuses


def grid_points(grid: dict[str, list]) -> list[list[str]]:
    """Every combination of the grid as `-S` overrides (`key=value`, values written as YAML)."""
    for key, values in grid.items():
        if not isinstance(values, list | tuple) or not values:
            raise ValueError(f"sweep grid {key}: expected a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [
        [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
         for key, value in zip(keys, combo, strict=True)]
        for combo in itertools.product(*(grid[key] for key in keys))
    ]  # fmt: skip


def queue_commands(points: list[list[str]], names: list[str], jobs: int = 1) -> list[list[str]]:
    """The DVC commands a local sweep runs: one `exp run --queue` per point, then `exp run --run-all`."""
    dvc = [sys.executable, "-m", "dvc"]
    commands = []
    for name, point in zip(names, points, strict=True):
        commands.append([*dvc, "exp", "run", "--queue", "--name", name, *itertools.chain(*(["-S", o] for o in point))])
    commands.append([*dvc, "exp", "run", "--run-all", "--jobs", str(jobs)])
    return commands


@task(cache_policy=NONE)
def run_queue(workdir: str, points: list[list[str]], names: list[str], jobs: int) -> dict[str, dict]:
    """Queue every point, run the queue, and return each point's outcome from DVC's queue status."""
    logger = get_run_logger()
    root = Path(workdir)
    env = stage_env()
    *queueing, run_all = queue_commands(points, names, jobs)
    for command in queueing:
        run_logged(command, root, env, logger, f"queueing experiment {command[command.index('--name') + 1]}")
    try:
        run_logged(run_all, root, env, logger, "dvc exp run --run-all")
    except StageFailed as error:
        logger.warning("%s", error)  # the per-point status below says which points failed
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        status = {entry.get("name"): entry["status"] for entry in repo.experiments.celery_queue.status()}
    outcomes = {}
    for name, point in zip(names, points, strict=True):
        state = status.get(name, "Unknown")
        outcomes[name] = {"overrides": point, "status": state}
        if state != "Success":
            logger.error("experiment %s (%s): %s; see `dvc queue logs %s`", name, " ".join(point), state, name)
    return outcomes


@task(cache_policy=NONE)
def run_shared(workdir: str, stages: list[str]) -> None:
    """`dvc repro <stages>`: the stages, with everything upstream, that every point of the sweep shares."""
    command = [sys.executable, "-m", "dvc", "repro", *stages]
    run_logged(command, Path(workdir), stage_env(), get_run_logger(), f"dvc repro {' '.join(stages)}")


def submit_runs(
    deployment: str,
    points: list[list[str]],
    names: list[str],
    params_file: str,
    timeout_s: float,
    job_variables: dict | None = None,
) -> dict[str, dict]:
    """One flow run of `deployment` per point, named as in `names`; waits for them, returns their final states."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    submitted = {}
    for name, point in zip(names, points, strict=True):
        run = run_deployment(deployment, parameters={"params_file": params_file, "overrides": point},
                             flow_run_name=name, job_variables=job_variables, timeout=0)  # fmt: skip
        submitted[name] = (run.id, point)
        logger.info("submitted %s: %s", name, " ".join(point))
    outcomes, deadline = {}, time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while len(outcomes) < len(submitted) and time.monotonic() < deadline:
            for name, (run_id, point) in submitted.items():
                state = client.read_flow_run(run_id).state
                if name not in outcomes and state is not None and state.is_final():
                    outcomes[name] = {"overrides": point, "status": state.name, "flow_run_id": str(run_id)}
            time.sleep(5)
    for name, (run_id, point) in submitted.items():
        outcomes.setdefault(name, {"overrides": point, "status": "Timed out", "flow_run_id": str(run_id)})
    return outcomes


@flow(name="sclora-sweep")
def sweep(
    grid: dict[str, list],
    params_file: str = PARAMS_FILE,
    workdir: str = ".",
    jobs: int = 1,
    work_pool: str | None = None,
    deployment: str | None = None,
    timeout_s: float = 24 * 3600,
    shared: tuple[str, ...] = SHARED_STAGES,
) -> dict:
    """Run every point of `grid` ({"train.lr": [1e-4, 2e-4], ...}); returns each point's outcome.

    Locally (no `work_pool`): DVC experiments named `sweep-<time>-<i>` (`dvc exp show` lists them).
    With `work_pool`: runs of `deployment` (default `sclora-pipeline/<work_pool>`, the pipeline flow
    deployed to that pool under the pool's name), each starting from the outputs of the `shared`
    stages, run once here (an empty `shared` runs nothing first). A failing point never stops
    the others; the result's `failed` lists them.
    """
    root = Path(workdir).resolve()
    points = grid_points(grid)
    for point in points:  # every point valid before anything is queued (one-line ParamsError)
        load_params(root / params_file if not Path(params_file).is_absolute() else params_file, point)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    names = [f"sweep-{stamp}-{i}" for i in range(len(points))]
    prepare_params(root, params_file)  # the queue (or the shared stages' experiment) snapshots params.yaml
    if work_pool:
        job_variables = None
        if shared:
            run_shared(str(root), list(shared))
            base = push_results(str(root), f"sweep-{stamp}-base", list(shared))
            job_variables = start_at(base["commit"])
        outcomes = submit_runs(deployment or f"{PIPELINE_FLOW}/{work_pool}", points, names, params_file, timeout_s,
                               job_variables)  # fmt: skip
        ok = "Completed"
    else:
        outcomes = run_queue(str(root), points, names, jobs)
        ok = "Success"
    failed = sorted(name for name, outcome in outcomes.items() if outcome["status"] != ok)
    return {"points": outcomes, "failed": failed}
