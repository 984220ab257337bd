"""Flow `frontier`: the comparison on learning-forgetting fronts (`make protocol`), then its report.

Runs the DVC stages `frontier_build@<build>` (the testbed at each seed of frontier.builds) and
`frontier@<build>-<config>` (a configuration at every rate of frontier.lrs, every seed, every checkpoint), or on
the real source (`make real-protocol`) its stages `fetch`, `convert`, `real_data`, `align` and
`frontier_real@real-<config>`, each item one Prefect task, at most `jobs` at a time, under one MLflow parent run;
none of the quick run's stages.
Then `python -m tasks frontier_report` reads every point into artifacts/frontier/report/ (report.md, the
pictures, the matched-utility table, the verdicts), which become the parent run's artifacts and a Prefect
Markdown artifact. Like `sclora run -S`, overrides are written into the workspace's params.yaml.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.publish import publish_frontier
from flows.stages import PARAMS_FILE, prepare_params, run_stage, run_stages, stage_plan, store_uri
from sclora.ops import tracking

# The frontier's stages, and the real source's (its model and data, which frontier_real reads; no item elsewhere).
STAGES = ("fetch", "convert", "real_data", "align", "frontier_build", "frontier", "frontier_real")


@flow(name="sclora-frontier", log_prints=True)
def frontier(
    params_file: str = PARAMS_FILE,
    overrides: tuple[str, ...] = (),
    workdir: str = ".",
    retries: int = 1,
    retry_delay_seconds: float = 5.0,
    jobs: int = 1,
) -> dict:
    """Every frontier stage item, then the report; returns its paths, the verdicts and the MLflow parent run id."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    root = Path(workdir).resolve()
    params = prepare_params(root, params_file, tuple(overrides))
    if not params.frontier.builds and not params.frontier.real:
        raise ValueError("frontier.builds is empty: name the builds, e.g. -S 'frontier.builds=[0,1]'")
    plan = {stage: upstream for stage, upstream in stage_plan(root).items() if stage.split("@")[0] in STAGES}
    stage_task = run_stage.with_options(retries=retries, retry_delay_seconds=retry_delay_seconds)
    with tracking.parent_run(
        "frontier", experiment=params.tracking.experiment, uri=store_uri(params, root), tags={"flow": "frontier"}
    ) as parent:  # fmt: skip
        run_stages(plan, stage_task, jobs, str(root), parent.info.run_id)
        report = publish_frontier(root, parent.info.run_id)
    return {"report": report, "parent_run_id": parent.info.run_id, "stages": list(plan)}
