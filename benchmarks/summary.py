"""The results table of docs/benchmarks.md, from the result files: every goal, its value, met or not, and the command.

python -m benchmarks.summary                    # rewrite the table in docs/benchmarks.md from benchmarks/results
python -m benchmarks.summary --print [FOLDER ...]   # print the table of each folder (e.g. benchmarks/results/gpu)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.record import RESULTS
from sclora.ops.atomic import write_text

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
# The table lives between these two lines of the doc; the prose around it is written by hand.
START = "<!-- benchmarks.summary: start -->"
END = "<!-- benchmarks.summary: end -->"


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


def with_table(text: str, rows: str) -> str:
    """`text` with whatever stands between its START and END lines replaced by `rows`."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"the doc needs one {START!r} line and, after it, one {END!r} line")
    head, rest = text.split(START)
    tail = rest.split(END)[1]
    return f"{head}{START}\n{rows}\n{END}{tail}"


def write_doc(folder: Path = RESULTS, doc: Path = DOC) -> Path:
    """Rewrite `doc`'s results table from `folder`; returns the doc's path."""
    write_text(doc, with_table(doc.read_text(encoding="utf-8"), table(folder)))
    return doc


def _number(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the tables instead of rewriting the doc")
    parser.add_argument("folders", nargs="*", type=Path, help="result folders (--print only; default: the results)")
    args = parser.parse_args()
    if args.print:
        for folder in args.folders or [RESULTS]:
            print(table(folder))
    elif args.folders:
        parser.error("FOLDER is for --print; the doc's table comes from benchmarks/results")
    else:
        print(f"wrote {write_doc()}")
