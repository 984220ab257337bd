"""The README's summary table, from the result files: every goal, its value, met or not, and the command.

    python -m benchmarks.summary [benchmarks/results ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.record import RESULTS


def table(folder: Path) -> str:
    """A markdown table of the goals (and, for a benchmark without goals, its figures) of `folder`'s results."""
    rows = ["| benchmark | figure | value | goal | met | command |", "|---|---|---|---|---|---|"]
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no benchmark results (*.json)")
    for path in paths:
        result = json.loads(path.read_text())
        command = f"`{result['settings'].get('command', 'python -m benchmarks.' + result['benchmark'])}`"
        goals = result["goals"].items()
        entries = [(name, g["value"], g["goal"], "yes" if g["met"] else "**no**") for name, g in goals]
        # A benchmark without goals shows the figures its settings name under "summary" (else all of them).
        shown = result["settings"].get("summary", list(result["figures"]))
        entries = entries or [(name, result["figures"][name], "-", "-") for name in shown]
        for name, value, spec, met in entries:
            rows.append(f"| {result['benchmark']} | {name} | {_number(value)} | {spec} | {met} | {command} |")
    return "\n".join(rows)


def _number(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    for folder in sys.argv[1:] or [RESULTS]:
        print(table(Path(folder)))
