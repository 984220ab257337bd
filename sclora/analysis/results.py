"""The results table: one row per run (or per run and checkpoint), and its per-item scores; written, read back.

`results.csv` has the columns of COLUMNS (docs/protocol.md, "The results table"): what the run is (task,
method, beta, seed, build, lr, step), every metric of the suite, the forgetting deltas, and `items`: the file,
relative to the table, that holds the run's per-item scores as rows `run,metric,item,score` (CSV, gzip when it
ends in .gz), read by sclora.analysis.intervals. A table made elsewhere needs `task`, `method`, `seed` and the metric
columns it judges; the rest may be empty. Reading it back checks it, and each problem is one line naming the row.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sclora.evaluate.metrics import AXES, BY_NAME, UNJUDGED

# results.csv column -> the preserved metric whose forgetting (base - run, in its good direction) it holds
FORGETTING_COLUMNS = {f"{axis}_forgetting": metric for axis, metric in AXES.items()}
IDENTITY = ("run", "task", "method", "beta", "seed", "build", "lr", "step")
COLUMNS = (*IDENTITY, *UNJUDGED, *FORGETTING_COLUMNS, "final_loss", "items")
METRICS = (*UNJUDGED, *FORGETTING_COLUMNS, "final_loss")
NUMERIC = ("beta", "lr", "step", *METRICS)
REQUIRED = ("task", "method", "seed")
# The metrics that are shares of items (in [0, 1]): every suite metric but the log-probabilities and margins.
SHARES = tuple(metric for metric in UNJUDGED if BY_NAME[metric].share)
ITEM_COLUMNS = ("run", "metric", "item", "score")
ITEMS_FILE = "items.csv.gz"
# Per-item means and the table's value of the metric agree to this (the table rounds nothing: float64 sums).
AGREEMENT = 1e-6


class ResultsError(ValueError):
    """A results table (or its per-item file) that cannot be judged; the message is one line naming the row."""


@dataclass
class Results:
    """The rows (numbers as floats, NaN where empty) and run -> metric -> item -> score."""

    rows: list[dict]
    items: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    _by_config: dict | None = field(default=None, init=False, repr=False, compare=False)

    def config_rows(self, task: str, method: str, beta: float | None) -> list[dict]:
        """The rows of one configuration (indexed once: a claim family reads each configuration many times)."""
        if self._by_config is None:
            self._by_config = {}
            for row in self.rows:
                beta_key = None if _missing(row["beta"]) else float(row["beta"])
                self._by_config.setdefault((row["task"], row["method"], beta_key), []).append(row)
        return self._by_config.get((task, method, None if beta is None else float(beta)), [])


def write_items(items: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path) -> None:
    """run -> metric -> item -> score as the long CSV (gzip), in a stable order."""
    with gzip.open(path, "wt", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(ITEM_COLUMNS)
        for run in sorted(items):
            for metric in sorted(items[run]):
                for item, score in sorted(items[run][metric].items()):
                    writer.writerow([run, metric, item, repr(float(score))])


def write_table(rows: Sequence[Mapping], path: Path, extra: Sequence[str] = ()) -> None:
    """The table's COLUMNS, then `extra` columns (read back by nothing: for people)."""
    columns = (*COLUMNS, *extra)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _cell(row.get(key)) for key in columns})


def _cell(value: object) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def read_results(path: str | Path) -> Results:
    """The table at `path` and the per-item scores its `items` column names, checked."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: results table not found")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            raw = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise ResultsError(f"{path}: not a CSV table ({error})") from None
    missing = [column for column in REQUIRED if column not in header]
    if missing:
        raise ResultsError(f"{path}: no column {', '.join(missing)} (the table's format: docs/protocol.md)")
    if not raw:
        raise ResultsError(f"{path}: no rows")
    rows = [_parse_row(row, i + 2, path) for i, row in enumerate(raw)]
    _unique(rows, path)
    items: dict[str, dict[str, dict[str, float]]] = {}
    for name in sorted({row["items"] for row in rows if row.get("items")}):
        _read_items(path.parent / name, items)
    _agree(rows, items, path)
    return Results(rows, items)


def _parse_row(row: Mapping[str, str | None], line: int, path: Path) -> dict:
    where = f"{path} line {line}"
    clean: dict = {key: (value or "").strip() for key, value in row.items() if key is not None}
    for key in REQUIRED:
        if not clean.get(key):
            raise ResultsError(f"{where}: empty {key}")
    for key in NUMERIC:
        clean[key] = number(clean.get(key, ""), f"{where}, {key}")
    try:
        clean["seed"] = int(clean["seed"])
    except ValueError:
        raise ResultsError(f"{where}, seed: not an integer: {clean['seed']!r}") from None
    clean["build"] = clean.get("build") or ""
    clean["run"] = clean.get("run") or _run_name(clean)
    return clean


def _run_name(row: Mapping) -> str:
    beta = "" if math.isnan(row["beta"]) else f"-{row['beta']:g}"
    build = f"-build{row['build']}" if row["build"] else ""
    return f"{row['task']}-{row['method']}{beta}-{row['seed']}{build}"


def number(value: object, where: str) -> float:
    """A table cell as a float: empty (or None, in a row not yet written) is NaN; anything else not a number fails
    in one line naming `where`."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ResultsError(f"{where}: not a number: {value!r}") from None


def _unique(rows: list[dict], path: Path) -> None:
    seen = {}
    for row in rows:
        key = (row["task"], row["method"], row["beta"] if not math.isnan(row["beta"]) else None, row["build"],
               row["seed"], row["step"] if not math.isnan(row["step"]) else None)  # fmt: skip
        if key in seen:
            raise ResultsError(f"{path}: runs {seen[key]} and {row['run']} are the same task, method, beta, build, "
                               "seed and step")  # fmt: skip
        seen[key] = row["run"]


def _read_items(path: Path, items: dict) -> None:
    if not path.is_file():
        raise ResultsError(f"{path}: per-item scores named by the results table's items column not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != ITEM_COLUMNS:
                raise ResultsError(f"{path}: expected columns {','.join(ITEM_COLUMNS)}, got {reader.fieldnames}")
            for line, row in enumerate(reader, 2):
                try:
                    score = float(row["score"])
                except (TypeError, ValueError):
                    raise ResultsError(f"{path} line {line}: score not a number: {row['score']!r}") from None
                items.setdefault(row["run"], {}).setdefault(row["metric"], {})[row["item"]] = score
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as error:
        raise ResultsError(f"{path}: not a readable per-item CSV ({error})") from None


def _agree(rows: list[dict], items: dict, path: Path) -> None:
    """Each run's per-item mean is its metric in the table: a mismatch means the two files are not one run."""
    for row in rows:
        for metric, scores in items.get(row["run"], {}).items():
            value = row.get(metric)
            if value is None or not scores or (isinstance(value, float) and math.isnan(value)):
                continue
            mean = math.fsum(scores.values()) / len(scores)
            if abs(mean - value) > AGREEMENT:
                raise ResultsError(f"{path}: run {row['run']}: its {len(scores)} item scores of {metric} average "
                                   f"{mean:.6f}, the table says {value:.6f}")  # fmt: skip


def config_runs(
    results: Results, task: str, method: str, beta: float | None, metric: str
) -> dict[tuple[str, int], dict[str, float]]:
    """One configuration's runs on `metric`: (build, seed) -> item -> score; a run without per-item scores of the
    metric stands as its one value (sclora.analysis.intervals.RUN_MEAN). The last step of a run is its result."""
    last: dict[tuple[str, int], tuple[float, dict]] = {}
    for row in results.config_rows(task, method, beta):
        value = row.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        unit = (row["build"], row["seed"])
        step = -math.inf if math.isnan(row["step"]) else row["step"]
        if unit not in last or step >= last[unit][0]:
            last[unit] = (step, row)
    runs = {}
    for unit, (_, row) in last.items():
        scores = results.items.get(row["run"], {}).get(metric)
        runs[unit] = dict(scores) if scores else {"": float(row[metric])}
    return runs


def same_beta(value: float | None, beta: float | None) -> bool:
    return _missing(value) if beta is None else (not _missing(value) and float(value) == float(beta))


def _missing(value: object) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))
