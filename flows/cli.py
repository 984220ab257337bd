"""`sclora`: the command line of the pipeline (run, sweep, select-beta, report, judge, promote, check-params).

Errors are caught here, once, and printed as one line with a non-zero exit; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

MLFLOW_UI = "mlflow ui --backend-store-uri sqlite:///mlflow.db"
PREFECT_UI = "prefect server start"


def _params_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", metavar="FILE", help="params file (default: params.yaml)")
    parser.add_argument("--workdir", default=".", metavar="DIR", help="the DVC project (default: .)")


def _overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a param, e.g. -S train.max_steps=10 (written into params.yaml, as dvc exp run -S does)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sclora", description="SC-LoRA fine-tuning pipeline (DVC stages, Prefect flows)"
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run the pipeline flow (every DVC stage, in DAG order)",
        description="Run the pipeline flow: every DVC stage in DAG order (--jobs at a time), then the report.",
    )  # fmt: skip
    _params_options(run)
    _overrides(run)
    run.add_argument("--retries", type=int, default=1, help="retries of a failed stage (default: 1)")
    run.add_argument("--jobs", type=int, default=1,
                     help="stages run at once when the DAG allows, sharing the CPU cores (default: 1; on one GPU "
                          "keep 1)")  # fmt: skip

    frontier = commands.add_parser(
        "frontier", help="run the comparison on learning-forgetting fronts (make protocol)",
        description="Every configuration of frontier.configs at every rate of frontier.lrs, on every build and "
                    "seed, scored at every checkpoint; then its report (artifacts/frontier/report/).",
    )  # fmt: skip
    _params_options(frontier)
    _overrides(frontier)
    frontier.add_argument("--retries", type=int, default=1, help="retries of a failed stage (default: 1)")
    frontier.add_argument("--jobs", type=int, default=1, help="stages run at once (default: 1)")

    sweep = commands.add_parser(
        "sweep", help="run a grid of params as DVC experiments or flow runs",
        description="Run every combination of the grid, e.g. --grid 'train.lr=[1e-4, 2e-4]'.",
    )  # fmt: skip
    _params_options(sweep)
    sweep.add_argument("--grid", action="append", required=True, metavar="KEY=LIST",
                       help="a params key and a YAML list of its values; repeat for more keys")  # fmt: skip
    sweep.add_argument("--jobs", type=int, default=1, help="experiments run at once locally (default: 1)")
    sweep.add_argument("--work-pool", help="submit one pipeline flow run per point to this Prefect work pool")
    sweep.add_argument("--deployment", help="deployment to run on the pool (default: sclora-pipeline/<work pool>)")

    select = commands.add_parser(
        "select-beta", help="find the beta that learns most within params' select.forgetting_budget, register it",
        description="Probe betas (select.seeds seeds each, on select.task) until the forgetting budget's boundary is "
                    "bracketed within select.tolerance or select.max_runs probes ran; register the chosen adapter "
                    "(exit 1 when the budget cannot be met).",
    )  # fmt: skip
    _params_options(select)
    _overrides(select)
    select.add_argument("--jobs", type=int, default=1, help="stages run at once (default: 1)")

    report = commands.add_parser(
        "report", help="bring the report stage up to date and show the results",
        description="Run the DVC `report` stage alone and print the results table.",
    )  # fmt: skip
    report.add_argument("--workdir", default=".", metavar="DIR", help="the DVC project (default: .)")

    judge = commands.add_parser(
        "judge", help="judge the paper's claims on any results table by the decision rule",
        description="Judge every claim the table has runs for by sclora.analysis.decision (docs/protocol.md, "
                    "'Decision rule'), as the report stage does: print each verdict with its evidence and write "
                    "them as JSON.",
    )  # fmt: skip
    judge.add_argument("results", help="a results table (results.csv; its format: docs/protocol.md)")
    judge.add_argument("--json", metavar="FILE", help="where the verdicts go (default: verdicts.json beside the table)")
    judge.add_argument("--params", default="params.yaml", metavar="FILE",
                       help="params whose tracking.gates.utility_tolerance is the utility margin (default: "
                            "params.yaml; the rule's own 0.02 when the file is absent)")  # fmt: skip
    judge.add_argument("--utility-margin", type=float, metavar="X", help="the utility margin, instead of params'")

    promote = commands.add_parser(
        "promote", help="move the champion alias to a version if the gates pass",
        description="Promote NAME VERSION to champion when params' tracking.gates pass (exit 1 when rejected).",
    )  # fmt: skip
    promote.add_argument("name", help="registered model name")
    promote.add_argument("version", help="model version")
    promote.add_argument("--params", default="params.yaml", metavar="FILE", help="params with tracking.uri and gates")

    check = commands.add_parser("check-params", help="validate a params file",
                                description="Validate a params file; exit non-zero with a one-line error.")  # fmt: skip
    check.add_argument("file", help="params file")
    _overrides(check)
    return parser


def check_prefect_api(timeout_s: float = 10.0) -> None:
    """Fail in one line when PREFECT_API_URL names a server that does not answer (before Prefect is imported)."""
    import httpx

    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return  # Prefect's ephemeral local server, started on demand
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=timeout_s).raise_for_status()
    except httpx.HTTPError as error:
        reason = str(error) or type(error).__name__
        raise ConnectionError(f"Prefect API {url} (PREFECT_API_URL) unreachable: {reason}") from None


def checked_params(path: str | Path, overrides: list[str]):
    """The params file loaded and validated, the testbed's own sections too."""
    from sclora.ops.config import load_params
    from sclora.real.params import real_params
    from sclora.testbed.params import check_sections

    params = load_params(path, overrides)
    check_sections(params, str(path))
    if params.real:
        real_params(params, str(path))
    return params


def ready_to_run(args: argparse.Namespace) -> None:
    """What a flow command checks before a flow run starts: its params (with the overrides) load, --jobs >= 1, and
    the Prefect API answers."""
    params_file = Path(args.params) if Path(args.params).is_absolute() else Path(args.workdir) / args.params
    checked_params(params_file, args.overrides)  # a bad file fails here, before a flow run starts
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    check_prefect_api()


def cmd_run(args: argparse.Namespace) -> int:
    ready_to_run(args)
    from flows.pipeline import pipeline

    result = pipeline(params_file=args.params, overrides=tuple(args.overrides), workdir=args.workdir,
                      retries=args.retries, jobs=args.jobs)  # fmt: skip
    print(f"report: {result['report']} (table: {result['results']})")
    print(f"MLflow parent run {result['parent_run_id']}; open the MLflow UI: {MLFLOW_UI}")
    print(f"Prefect UI (flow runs, logs, artifacts): {PREFECT_UI}")
    return 0


def cmd_frontier(args: argparse.Namespace) -> int:
    ready_to_run(args)
    from flows.frontier import frontier

    result = frontier(params_file=args.params, overrides=tuple(args.overrides), workdir=args.workdir,
                      retries=args.retries, jobs=args.jobs)  # fmt: skip
    print(f"report: {result['report']}")
    print(f"MLflow parent run {result['parent_run_id']}; open the MLflow UI: {MLFLOW_UI}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    grid = {}
    for item in args.grid:
        key, sep, raw = item.partition("=")
        values = yaml.safe_load(raw) if sep else None
        if not sep or not isinstance(values, list):
            raise ValueError(f"--grid '{item}': expected KEY=[value, ...]")
        grid[key.strip()] = values
    check_prefect_api()
    from flows.sweep import sweep

    result = sweep(grid=grid, params_file=args.params, workdir=args.workdir, jobs=args.jobs,
                   work_pool=args.work_pool, deployment=args.deployment)  # fmt: skip
    for name, outcome in result["points"].items():
        print(f"{name}: {outcome['status']} ({' '.join(outcome['overrides'])})")
    if result["failed"]:
        print(f"error: {len(result['failed'])} of {len(result['points'])} points failed: "
              f"{', '.join(result['failed'])}", file=sys.stderr)  # fmt: skip
        return 1
    print("compare them: dvc exp show" if not args.work_pool else f"Prefect UI: {PREFECT_UI}")
    return 0


def cmd_select_beta(args: argparse.Namespace) -> int:
    ready_to_run(args)
    from flows.select_beta import SELECT_DIR, select_beta

    result = select_beta(params_file=args.params, overrides=tuple(args.overrides), workdir=args.workdir,
                         jobs=args.jobs)  # fmt: skip
    for i, probe in enumerate(result["probes"], 1):
        print(f"probe {i}: beta {probe['beta']:g}, utility {probe['utility']['mean']:.3f}, "
              f"{'within budget' if probe['within_budget'] else 'over budget'}")  # fmt: skip
    print(f"selection: {Path(args.workdir) / SELECT_DIR / 'selection.md'}")
    if result["version"] is None:
        print(f"error: select-beta: {result['message']}", file=sys.stderr)
        return 1
    print(f"{result['message']}\nregistered {result['model']} version {result['version']} as candidate")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from flows.publish import REPORT_DIR
    from flows.stages import run_logged, stage_env

    root = Path(args.workdir)
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", "report"]
    run_logged(command, root, stage_env(), _StderrLog(), "stage report")
    results = root / REPORT_DIR / "results.csv"
    print(results.read_text(encoding="utf-8"), end="")
    print(f"report: {root / REPORT_DIR / 'report.md'}")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    import json

    from sclora.analysis.claims import judgement, verdict_lines
    from sclora.analysis.decision import Rule
    from sclora.analysis.results import read_results
    from sclora.ops.atomic import write_text
    from sclora.ops.config import load_params

    results = read_results(args.results)
    if args.utility_margin is not None:
        if not args.utility_margin >= 0:
            raise ValueError(f"--utility-margin must be >= 0, got {args.utility_margin}")
        margin = args.utility_margin
    elif Path(args.params).is_file():
        margin = load_params(args.params).tracking.gates.utility_tolerance
    else:
        margin = Rule().utility_margin
    verdicts = judgement(results, Rule(utility_margin=margin))
    if not verdicts["claims"]:
        raise ValueError(f"{args.results}: no claim has its configurations in the table (sclora and lora or pissa, "
                         "random_subspace, sclora_frozen, or two betas)")  # fmt: skip
    out = Path(args.json) if args.json else Path(args.results).parent / "verdicts.json"
    write_text(out, json.dumps({"table": str(args.results), **verdicts}, indent=2) + "\n")
    print("\n".join(verdict_lines(verdicts)))
    print(f"verdicts: {out}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from sclora.ops import registry, tracking
    from sclora.ops.config import load_params

    params = load_params(args.params)
    tracking.use_store(params.tracking.uri)
    accepted, reasons = registry.promote(args.name, args.version, params.tracking.gates)
    verdict = f"{args.name} version {args.version} is now {registry.CHAMPION}" if accepted else "rejected"
    print(f"{verdict}: {'; '.join(reasons)}")
    return 0 if accepted else 1


def cmd_check_params(args: argparse.Namespace) -> int:
    checked_params(args.file, args.overrides)
    print(f"{args.file}: ok")
    return 0


class _StderrLog:
    """Stage output of `sclora report` goes to stderr, so stdout holds only the table."""

    def info(self, line: str) -> None:
        print(line, file=sys.stderr)


COMMANDS = {"run": cmd_run, "frontier": cmd_frontier, "sweep": cmd_sweep, "select-beta": cmd_select_beta,
            "report": cmd_report, "judge": cmd_judge, "promote": cmd_promote,
            "check-params": cmd_check_params}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except Exception as error:  # noqa: BLE001 - the one place errors are caught: print one line
        if args.debug:
            raise
        lines = str(error).strip().splitlines()
        print(f"error: {args.command}: {lines[0] if lines else type(error).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
