"""Flow `pipeline`: every DVC stage item in DVC's own order, one Prefect task each (flows/stages.py), under one
MLflow parent run; then the report's table and plots as Prefect artifacts (flows/publish.py), and the frontier's
report too when params name frontier builds.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows.publish import publish_frontier, publish_report
from flows.remotes import push_results
from flows.stages import PARAMS_FILE, prepare_params, run_stage, run_stages, stage_plan, store_uri
from sclora.ops import tracking


@flow(name="sclora-pipeline", log_prints=True)
def pipeline(
    params_file: str = PARAMS_FILE,
    overrides: tuple[str, ...] = (),
    workdir: str = ".",
    retries: int = 1,
    retry_delay_seconds: float = 5.0,
    push: bool = False,
    experiment: str | None = None,
    jobs: int = 1,
) -> dict:
    """Run the DVC pipeline stage by stage under one MLflow parent run, then publish the report.

    `jobs`: stages run at the same time at most (1: one after another, as `dvc repro` does). Each stage process
    gets an equal share of the CPU cores with the stages beside it (OMP_NUM_THREADS, unless it is set). Returns
    the report's paths, the MLflow parent run id and the stages in `dvc repro` order. With `push` (a work-pool
    run), the outputs go to the DVC remote and the workspace to the git remote as DVC experiment `experiment`
    (default: the flow run's name); see flows/remotes.py.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    root = Path(workdir).resolve()
    params = prepare_params(root, params_file, tuple(overrides))
    plan = stage_plan(root)
    stage_task = run_stage.with_options(retries=retries, retry_delay_seconds=retry_delay_seconds)
    with tracking.parent_run(
        "pipeline", experiment=params.tracking.experiment, uri=store_uri(params, root), tags={"flow": "pipeline"}
    ) as parent:  # fmt: skip
        run_stages(plan, stage_task, jobs, str(root), parent.info.run_id)
        published = publish_report(root)
        if (
            params.frontier.builds or params.frontier.real
        ):  # the frontier stages ran too: their report is this flow's as well
            published["frontier_report"] = publish_frontier(root, parent.info.run_id)
    result = {**published, "parent_run_id": parent.info.run_id, "stages": list(plan)}
    if push:
        result["pushed"] = push_results(str(root), experiment or flow_run.get_name())
    return result
