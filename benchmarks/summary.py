"""The results tables of docs/benchmarks.md, from the result files: every goal, its value, met or not, and the
command; one table for benchmarks/results and one for each folder of SECTIONS inside it (the real model's).

python -m benchmarks.summary                    # rewrite the tables in docs/benchmarks.md from benchmarks/results
python -m benchmarks.summary --print [FOLDER ...]   # print the table of each folder (e.g. benchmarks/results/gpu)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.record import RESULTS
from sclora.ops.atomic import write_text

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTIONS = ("real",)  # result folders inside benchmarks/results with a table of their own (`--real` runs)


def markers(section: str = "") -> tuple[str, str]:
    """The two lines of the doc a table lives between (the prose around it is written by hand): the results'
    own table (`section` "") or a section's."""
    name = f"benchmarks.summary {section}".rstrip()
    return f"<!-- {name}: start -->", f"<!-- {name}: end -->"


START, END = markers()


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


def with_table(text: str, rows: str, section: str = "") -> str:
    """`text` with whatever stands between the section's start and end lines replaced by `rows`."""
    start, end = markers(section)
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"the doc needs one {start!r} line and, after it, one {end!r} line")
    head, rest = text.split(start)
    tail = rest.split(end)[1]
    return f"{head}{start}\n{rows}\n{end}{tail}"


def tables(folder: Path = RESULTS) -> dict[str, str]:
    """{section: its table} for `folder` ("") and each folder of SECTIONS inside it that holds results."""
    sections = [s for s in SECTIONS if any((folder / s).glob("*.json"))]
    return {"": table(folder)} | {s: table(folder / s) for s in sections}


def write_doc(folder: Path = RESULTS, doc: Path = DOC) -> Path:
    """Rewrite `doc`'s results tables from `folder`; returns the doc's path."""
    text = doc.read_text(encoding="utf-8")
    for section, rows in tables(folder).items():
        text = with_table(text, rows, section)
    write_text(doc, text)
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
