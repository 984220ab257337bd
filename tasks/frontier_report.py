"""`python -m tasks frontier_report`: every point of artifacts/frontier/points -> artifacts/frontier/report/.

The fronts, the primary contrast (frontier.primary) and the secondary claims judged by the decision rule (builds as
units or as blocks by their count) and the pictures, by sclora.analysis.frontier_report, over the builds and
configurations params.frontier names. A point file missing for one of them is an error that names it: a report over
part of the design would read as the whole.
"""

from __future__ import annotations

import json

from sclora.analysis.decision import Rule
from sclora.analysis.frontier_report import write_frontier_report
from sclora.analysis.primary import Primary
from sclora.ops.config import Params, parse_config
from tasks.artifacts import FRONTIER, frontier_points_path

REPORT_DIR = FRONTIER / "report"


def run(params: Params) -> dict:
    frontier = params.frontier
    builds = [*frontier.builds, *frontier.real]  # testbed builds, the real source's one
    if not builds:
        raise ValueError("frontier.builds and frontier.real are empty: no frontier to report")
    wanted = [(build, config) for build in builds for config in frontier.configs]
    missing = [str(frontier_points_path(b, c)) for b, c in wanted if not frontier_points_path(b, c).is_file()]
    if missing:
        raise FileNotFoundError(f"no points for {', '.join(missing)}; run the frontier stages first")
    points, base = [], {}
    for build, config in wanted:
        result = json.loads(frontier_points_path(build, config).read_text(encoding="utf-8"))
        points += result["points"]
        # Keyed as the points are: the real source's one build is numbered (tasks.frontier.REAL_BUILD), not named.
        base.setdefault(result["build"], result["base"])  # every item of a build scored the same base model
    rule = Rule(utility_margin=params.tracking.gates.utility_tolerance)
    fixed = frontier.primary
    primary = Primary(parse_config(fixed.config), parse_config(fixed.versus), fixed.level, frontier.task)
    return write_frontier_report(points, base, REPORT_DIR, levels=tuple(frontier.levels), rule=rule, primary=primary)
