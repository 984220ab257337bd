"""Forgetting: how much of each preserved metric fine-tuning lost against the base model.

For every preserved metric, `delta` is the loss in the metric's good direction, so a positive
delta always means forgetting: base - finetuned for metrics where higher is better (knowledge,
refusal rate, benign helpfulness, ...), finetuned - base for those where lower is better (harmful
compliance, collapse, over-refusal on benign requests, the judge's harmfulness). `ratio` is
delta / |base|, the share of the base value lost (None when the base value is 0).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from sclora.evaluate.metrics import PRESERVED


class ForgettingError(ValueError):
    """Base and fine-tuned metrics cannot be compared; the message names the metric or file."""


def forgetting(base: Mapping[str, object], finetuned: Mapping[str, object]) -> dict[str, dict[str, float | None]]:
    """{metric: {"base", "finetuned", "delta", "ratio"}} for every preserved metric the runs report.

    A preserved metric reported by one run and not the other means the two were evaluated
    differently (e.g. a stale base cache): that is an error, not a silent gap.
    """
    out: dict[str, dict[str, float | None]] = {}
    for name, direction in PRESERVED.items():
        if name not in base and name not in finetuned:
            continue
        if name not in base or name not in finetuned:
            which = "base" if name not in base else "fine-tuned"
            raise ForgettingError(f"metric '{name}' missing from the {which} metrics; evaluate both the same way")
        b, f = float(base[name]), float(finetuned[name])
        if not (math.isfinite(b) and math.isfinite(f)):
            raise ForgettingError(f"metric '{name}' is not finite (base {b}, fine-tuned {f})")
        delta = (b - f) * direction
        out[name] = {"base": b, "finetuned": f, "delta": delta, "ratio": delta / abs(b) if b else None}
    if not out:
        raise ForgettingError(f"no preserved metric ({', '.join(PRESERVED)}) in either run")
    return out


def load_metrics(path: str | Path) -> dict:
    """A metrics.json written by sclora.evaluate.suite.write_results."""
    path = Path(path)
    if not path.is_file():
        raise ForgettingError(f"{path}: base metrics not found; evaluate the base model first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ForgettingError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None


def with_forgetting(metrics: Mapping[str, object], base_metrics: str | Path | Mapping[str, object]) -> dict:
    """`metrics` plus `forgetting` ({metric: delta}) and `forgetting_ratio` ({metric: ratio}) against the base."""
    base = load_metrics(base_metrics) if isinstance(base_metrics, (str, Path)) else base_metrics
    table = forgetting(base, metrics)
    return {
        **metrics,
        "forgetting": {name: row["delta"] for name, row in table.items()},
        "forgetting_ratio": {name: row["ratio"] for name, row in table.items()},
    }
