"""`python -m tasks <stage> [item]`: the command every dvc.yaml stage calls.

Each stage lives in `tasks/<stage>.py` and exposes `run(params, item=None)`.
Errors are caught here, once, and printed as one line (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from sclora.ops.config import load_params
from sclora.real.params import real_params
from sclora.testbed.params import check_sections

# Every module of this package is a stage (or a command beside the stages), but these.
STAGES = tuple(
    sorted(
        path.stem
        for path in Path(__file__).parent.glob("*.py")
        if path.stem not in ("__init__", "__main__", "artifacts")
    )
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("item", nargs="?", help="matrix item of the stage, e.g. a method or beta")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params, args.overrides)
        check_sections(params, args.params)
        if params.real:
            real_params(params, args.params)
        stage = importlib.import_module(f"tasks.{args.stage}")
        result = stage.run(params, args.item) if args.item else stage.run(params)
    except Exception as error:  # noqa: BLE001 - the one place a stage's errors are caught: print one line
        if args.debug:
            raise
        lines = str(error).strip().splitlines()
        print(f"error: {args.stage}: {lines[0] if lines else type(error).__name__}", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
