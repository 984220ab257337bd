"""Per-item scores: each suite metric's score on every evaluation item of one run, read from its samples.

A run's metric is a mean over items; judging a difference between methods needs the items themselves
(sclora.analysis.intervals resamples them). Every run keeps its samples (eval/samples.jsonl: each prompt with its
answer and per-sample scores); this reads, for each metric that is a mean of one per-sample score over one
task's items, that score per item. A metric averaged over several tasks (a role with more than one task) is an
unweighted mean of task means, not a mean over items: it gets no per-item scores rather than wrong ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from sclora.evaluate.metrics import METRICS
from sclora.evaluate.suite import SAMPLES_FILE, EvalError

# Suite metric -> (the role whose samples hold it, the per-sample score; None: the role's one score), for the
# metrics the table keeps per-item scores of.
ITEM_METRICS = {metric.name: (metric.role, metric.score) for metric in METRICS if "items" in metric.shown}


def item_scores(samples: Iterable[Mapping]) -> dict[str, dict[str, float]]:
    """metric -> item id -> score, for each metric of ITEM_METRICS the samples hold on exactly one task."""
    by_role: dict[str, list[Mapping]] = {}
    for row in samples:
        by_role.setdefault(row["role"], []).append(row)
    out: dict[str, dict[str, float]] = {}
    for metric, (role, score) in ITEM_METRICS.items():
        rows = by_role.get(role, [])
        if len({row["task"] for row in rows}) != 1:
            continue
        scores = {}
        for row in rows:
            key = score if score is not None else _only_score(row)
            if key not in row["scores"]:
                break  # the task does not report this score (e.g. compliance on a set without compliant answers)
            value = row["scores"][key]
            if value is None:
                raise EvalError(f"sample {row['task']}/{row['id']}: no '{key}' score")
            scores[str(row["id"])] = float(value)
        else:
            if len(scores) != len(rows):
                raise EvalError(f"eval task {rows[0]['task']}: item ids are not unique")
            out[metric] = scores
    return out


def _only_score(row: Mapping) -> str:
    if len(row["scores"]) != 1:
        raise EvalError(f"sample {row['task']}/{row['id']}: expected one score, got {sorted(row['scores'])}")
    return next(iter(row["scores"]))


def read_item_scores(eval_dir: str | Path) -> dict[str, dict[str, float]]:
    """`item_scores` of the samples an evaluation wrote in `eval_dir`; none when it wrote none (a run evaluated
    before samples were kept)."""
    path = Path(eval_dir) / SAMPLES_FILE
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as handle:
        return item_scores(json.loads(line) for line in handle if line.strip())
