"""Flow `pipeline`: every DVC stage item in DVC's own order, one Prefect task each (flows/stages.py), under one
MLflow parent run; then the report's table and plots as Prefect artifacts.
"""

from __future__ import annotations

import base64
import csv
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from flows.remotes import push_results
from flows.stages import PARAMS_FILE, prepare_params, run_stage, run_stages, stage_plan, store_uri
from sclora import tracking
from tasks.artifacts import REPORT

REPORT_DIR = REPORT  # where the report stage writes
EMBED_LIMIT = 1 << 20  # PNGs up to 1 MiB are embedded in the plots artifact, larger ones only linked


def publish_report(workdir: Path) -> dict[str, str]:
    """The results table and the plots as Prefect artifacts; returns the report's paths."""
    report = workdir / REPORT_DIR
    results = report / "results.csv"
    if not results.is_file():
        raise FileNotFoundError(f"{results}: no results table (did the report stage run?)")
    with results.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    create_table_artifact(table=rows, key="sclora-results", description=f"One row per run ({results})")
    sections = [f"# SC-LoRA report\n\nFiles: `{report}` (`report.md`, `results.csv`, the PNGs below).\n"]
    sections += embedded_plots(report)
    create_markdown_artifact(markdown="\n".join(sections), key="sclora-plots", description="The report's plots")
    return {"report": str(report / "report.md"), "results": str(results)}


def embedded_plots(report: Path) -> list[str]:
    """A Markdown section per PNG of `report`, the image embedded (up to EMBED_LIMIT bytes; larger ones named)."""
    sections = []
    for png in sorted(report.glob("*.png")):
        data = png.read_bytes()
        if len(data) <= EMBED_LIMIT:
            image = f"![{png.stem}](data:image/png;base64,{base64.b64encode(data).decode('ascii')})"
        else:
            image = f"(too large to embed: {len(data)} bytes)"
        sections.append(f"## {png.stem}\n\n`{png}`\n\n{image}\n")
    return sections


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
    result = {**published, "parent_run_id": parent.info.run_id, "stages": list(plan)}
    if push:
        result["pushed"] = push_results(str(root), experiment or flow_run.get_name())
    return result
