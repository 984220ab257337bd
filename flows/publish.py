"""What the flows publish when they end: a report's files as MLflow artifacts and its tables and pictures as
Prefect artifacts (the pipeline's report, the frontier's report)."""

from __future__ import annotations

import base64
import csv
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.stages import run_logged, stage_env
from sclora.ops import tracking
from tasks.artifacts import REPORT
from tasks.frontier_report import REPORT_DIR as FRONTIER_REPORT_DIR

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


def publish_frontier(root: Path, parent_run_id: str) -> str:
    """`python -m tasks frontier_report` in `root`, its files logged to the active MLflow run and its pictures a
    Prefect Markdown artifact; returns report.md's path. Also the pipeline flow's last step when params name
    frontier builds (a params file such as configs/protocol-full.yaml on a work pool's pipeline deployment)."""
    command = ["python", "-m", "tasks", "frontier_report"]
    run_logged(command, root, stage_env(parent_run_id), get_run_logger(), "frontier report")
    report = root / FRONTIER_REPORT_DIR
    tracking.log_files([report], artifact_path="frontier")
    sections = [f"# Learning-forgetting fronts\n\nFiles: `{report}` (report.md, points.csv, matched.csv).\n"]
    create_markdown_artifact(markdown="\n".join(sections + embedded_plots(report)), key="sclora-frontier",
                             description="The frontier report's pictures")  # fmt: skip
    return str(report / "report.md")
