"""Flow `select_beta`: the beta that learns most within a forgetting budget, found with few training runs, registered.

The budget is `select.forgetting_budget` (largest forgetting per preserved metric). The flow first brings the
capture and the forecast stage up to date (no training), then probes betas by the search of sclora.analysis.selection:
each probe is one round of the pipeline's own DVC stages in this workspace, with `solve.betas` the betas probed
so far, on `select.task` alone, sclora alone, `select.seeds` seeds, so lineage and MLflow runs are those of any
run (all under one MLflow parent run). A round runs only the new beta's items (solve, train); the earlier ones
are not re-checked. A probe is within budget when the decision rule's upper bound (seeds and items: the runs'
per-item forgetting against the base model's samples) of each budgeted forgetting is (sclora.analysis.selection).

The chosen beta is then trained again on `select.confirm_seeds` (fresh seeds, none of the probes'): within budget
there too, its best-utility confirmation seed (the one that forgets least among equals) is registered as
`candidate` of tracking.registered_model, with the budget, every probe, the confirmation and the forecast in the
version's description and tags; over budget, the flow says so and steps back to the next candidate of larger
beta. A budget no probe meets, or no candidate confirms, registers nothing and ends with a one-line message.

Like `sclora run -S`, the overrides are written into the workspace's params.yaml: afterwards it says what the
last round ran (`git checkout params.yaml` returns to yours; artifacts/select/base-params.yaml keeps what the
search started from). Output: artifacts/select/selection.{json,md}.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from prefect import flow, get_run_logger

from flows.stages import PARAMS_FILE, prepare_params, run_stage, run_stages, stage_plan, store_uri
from sclora.analysis.selection import Confirmation, Probe, Selection, confirm, first_beta, search
from sclora.evaluate.items import read_item_scores
from sclora.evaluate.metrics import PRESERVED
from sclora.method.forecast import rank_correlation, share_at
from sclora.ops import registry, tracking
from sclora.ops.atomic import write_text
from sclora.ops.config import Params
from tasks.artifacts import (
    ARTIFACTS,
    EVAL_BASE,
    METRICS,
    RUN_FILE,
    RunSpec,
    beta_name,
    load_forecast,
    read_json,
    write_json,
)

SELECT_DIR = ARTIFACTS / "select"
VARIANT = "sclora"
FIRST_STAGES = ("forecast", "evaluate_base")  # with everything upstream: what every probe needs, and no training


def probe_overrides(params: Params, betas: list[float], seeds: list[int]) -> list[str]:
    """The -S overrides of a round: sclora alone on select.task, `seeds` (the probes' or the confirmation's), the
    betas probed so far."""
    select = params.select
    dropped = [f"~data.finetune.{task}" for task in params.data.finetune if task != select.task]
    return [*dropped, "train.methods=[]", f"train.sclora_variants=[{VARIANT}]", f"train.seeds={list(seeds)}",
            "tune.methods=[]", "tune.betas=[]", "train.lr_source=params.yaml",
            f"solve.betas=[{', '.join(beta_name(b) for b in sorted(betas))}]"]  # fmt: skip


def round_plan(plan: dict[str, list[str]], targets: set[str], done: set[str] = frozenset()) -> dict[str, list[str]]:
    """The stages of `plan` that `targets` need: the targets and everything upstream of them, less the stages
    `done` in earlier rounds (an earlier probe's items: nothing they depend on changes between rounds)."""
    needed, stack = set(), [stage for stage in targets if stage not in done]
    while stack:
        stage = stack.pop()
        if stage not in needed:
            needed.add(stage)
            stack.extend(up for up in plan[stage] if up not in done)
    return {stage: [up for up in upstream if up in needed] for stage, upstream in plan.items() if stage in needed}


def beta_stages(params: Params, beta: float, seeds: list[int]) -> set[str]:
    """The stage items of one probe (or confirmation): its solve and one train item per seed."""
    runs = [RunSpec(params.select.task, VARIANT, seed, beta) for seed in seeds]
    return {f"solve@{beta_name(beta)}", *(f"train_sclora@{run.name}" for run in runs)}


def read_probe(params: Params, root: Path, beta: float, seeds: list[int]) -> Probe:
    """A probe's per-seed utility and forgetting, from its train items' metrics, and its per-item forgetting
    (base minus run in the metric's good direction) where the runs' and the base model's samples have items."""
    budget = params.select.forgetting_budget
    utility, forgetting, items = {}, {metric: {} for metric in budget}, {metric: {} for metric in budget}
    base = read_item_scores(root / EVAL_BASE)
    for seed in seeds:
        run = RunSpec(params.select.task, VARIANT, seed, beta)
        metrics = read_json(root / run.dir / "eval" / METRICS, f"metrics of run {run.name}")
        utility[seed] = float(metrics["utility"])
        scores = read_item_scores(root / run.dir / "eval")
        for metric in forgetting:
            if metric not in metrics.get("forgetting", {}):
                raise ValueError(f"select.forgetting_budget: run {run.name} reports no forgetting of '{metric}'")
            forgetting[metric][seed] = float(metrics["forgetting"][metric])
            ours, theirs = scores.get(metric, {}), base.get(metric, {})
            if ours and ours.keys() == theirs.keys():
                sign = PRESERVED[metric]
                items[metric][("", seed)] = {item: sign * (theirs[item] - ours[item]) for item in ours}
    complete = {metric: runs for metric, runs in items.items() if len(runs) == len(seeds)}
    return Probe(beta, utility, forgetting, complete)


def forecast_check(forecast: dict, selection: Selection) -> dict[str, dict | None]:
    """Per budgeted metric: the rank correlation between the forecast D- share and the measured mean forgetting
    over the probes (None below 3 probes or without spread)."""
    shares = {p.beta: share_at(forecast, "neg_share", p.beta) for p in selection.probes}
    return {metric: rank_correlation(shares, {p.beta: p.interval(metric).mean for p in selection.probes})
            for metric in selection.budget}  # fmt: skip


def register_choice(params: Params, root: Path, selection: Selection, confirmation: Confirmation, forecast: dict,
                    check: dict) -> tuple[str, str]:  # fmt: skip
    """Register the confirmed beta's best confirmation seed as `candidate`, the search's evidence in the
    description and tags; returns the version and the run registered."""
    budget = selection.budget
    beta = confirmation.beta
    seeds = {}
    for seed in params.select.confirm_seeds:
        run = RunSpec(params.select.task, VARIANT, seed, beta)
        seeds[seed] = read_json(root / run.dir / "eval" / METRICS, f"metrics of run {run.name}")
    best = min(seeds, key=lambda s: (-seeds[s]["utility"], sum(seeds[s]["forgetting"][m] for m in budget), s))
    spec = RunSpec(params.select.task, VARIANT, best, beta)
    summary = read_json(root / spec.dir / RUN_FILE, f"run {spec.name}")
    metrics = seeds[best]
    shown = {key: metrics[key] for key in ("utility", "forgetting") if key in metrics}
    tags = {"run": spec.name, "task": spec.task, "method": spec.method, "seed": str(best), "beta": str(beta),
            "select.budget": json.dumps(budget), "select.beta": str(beta), "select.stopped": selection.stopped,
            "select.probes": json.dumps([[p.beta, p.within(budget)] for p in selection.probes]),
            "select.confirmed_on": json.dumps(list(params.select.confirm_seeds))}  # fmt: skip
    tracking.use_store(store_uri(params, root))
    note = selection_markdown(selection, forecast, check, confirmation)
    base = read_json(root / EVAL_BASE / METRICS, "metrics of the base model")  # its column in the description
    version = registry.register_adapter(root / spec.dir / "export", params.tracking.registered_model, shown,
                                        tags, run_id=summary["mlflow_run_id"], note=note, base=base)  # fmt: skip
    return version, spec.name


def selection_markdown(selection: Selection, forecast: dict, check: dict, confirmation: Confirmation | None) -> str:
    """The search as a reviewer reads it: budget, every probe with intervals, the confirmation, the forecast and
    how well it predicted, the disagreements with the expected trade-off, the outcome."""
    budget = selection.budget
    asked = ", ".join(f"{metric} <= {limit:g}" for metric, limit in budget.items())
    lines = [f"## Beta for a forgetting budget ({asked})", "", selection.message, "",
             "Within budget: the decision rule's one-sided 95 % upper bound (seeds and items) of each budgeted "
             f"forgetting. Candidates in the order of choice: {', '.join(f'{b:g}' for b in selection.candidates)}"
             f"{'' if selection.candidates else 'none'}. Stopped at {selection.stopped}.", "",
             f"Confirmation on fresh seeds: {confirmation.message if confirmation else 'not run (no candidate)'}", "",
             "| probe | beta | utility | " + " | ".join(f"{m} forgetting" for m in budget)
             + " | forecast D- share | within budget |",
             "|---|---|---|" + "---|" * len(budget) + "---|---|"]  # fmt: skip
    for i, probe in enumerate(selection.probes, 1):
        cells = [_cell(probe.interval(metric)) for metric in ("utility", *budget)]
        share = share_at(forecast, "neg_share", probe.beta)
        lines.append(f"| {i} | {probe.beta:g} | {' | '.join(cells)} | {share:.3f} | "
                     f"{'yes' if probe.within(budget) else 'no'} |")  # fmt: skip
    lines += ["", "Forecast (D- energy share) against measured forgetting, Spearman over the probes:"]
    for metric, result in check.items():
        text = (
            "not computable (fewer than 3 probes, or no spread)"
            if result is None
            else f"rho {result['rho']:+.2f} (p {result['p']:.2f}, {result['n']} probes)"
        )
        lines.append(f"- {metric}: {text}")
    lines.append(
        "The D- share falls with beta by construction, so a rank correlation over betas is what any "
        "decreasing function of beta would score: it says the probes' order, not that the forecast predicts."
    )
    if selection.disagreements:
        lines += ["", "Measurements against the expected trade-off (forgetting and utility falling with beta):"]
        lines += [f"- {d}" for d in selection.disagreements]
    return "\n".join(lines)


def _cell(interval) -> str:
    if math.isnan(interval.low):
        return f"{interval.mean:.3f}"
    return f"{interval.mean:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


@flow(name="sclora-select-beta", log_prints=True)
def select_beta(
    params_file: str = PARAMS_FILE,
    overrides: tuple[str, ...] = (),
    workdir: str = ".",
    retries: int = 1,
    jobs: int = 1,
) -> dict:
    """Search beta for params' `select` budget; returns the chosen beta (None when the budget cannot be met), the
    registered version, every probe, why the search stopped and how well the forecast predicted."""
    logger = get_run_logger()
    root = Path(workdir).resolve()
    params = prepare_params(root, params_file, tuple(overrides))
    select = params.select
    if select.task not in params.data.finetune:
        raise ValueError(f"select.task: '{select.task}' is not in data.finetune ({', '.join(params.data.finetune)})")
    stage_task = run_stage.with_options(retries=retries)
    probed: list[float] = []
    # Every round starts from the params as given (file and overrides), not from the last round's params.yaml.
    base = root / SELECT_DIR / "base-params.yaml"
    base.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / PARAMS_FILE, base)

    first_round: set[str] = set()  # the capture, the forecast and what they need: run once, in round 0

    def run_round(betas: list[float], targets: set[str], done: set[str] = frozenset(), seeds=select.seeds) -> set[str]:
        prepare_params(root, base, tuple(probe_overrides(params, betas, seeds)))
        stages = round_plan(stage_plan(root), targets, done | first_round)
        run_stages(stages, stage_task, jobs, str(root), parent.info.run_id)
        return set(stages)

    def measure(beta: float) -> Probe:
        earlier = set().union(*(beta_stages(params, b, select.seeds) for b in probed))
        probed.append(beta)
        logger.info("probe %d: beta %g (%d seeds)", len(probed), beta, len(select.seeds))
        run_round(probed, beta_stages(params, beta, select.seeds), earlier)
        probe = read_probe(params, root, beta, select.seeds)
        logger.info("probe %d: %s", len(probed), json.dumps(probe.summary(select.forgetting_budget)))
        return probe

    def measure_again(beta: float) -> Probe:
        logger.info("confirmation: beta %g on %d fresh seeds", beta, len(select.confirm_seeds))
        done = set().union(*(beta_stages(params, b, select.seeds) for b in probed))
        run_round(probed, beta_stages(params, beta, select.confirm_seeds), done, select.confirm_seeds)
        return read_probe(params, root, beta, select.confirm_seeds)

    with tracking.parent_run("select_beta", experiment=params.tracking.experiment, uri=store_uri(params, root),
                             tags={"flow": "select_beta",
                                   "select.budget": json.dumps(select.forgetting_budget)}) as parent:  # fmt: skip
        # The capture and the forecast, no training yet (solve.betas must name a beta; nothing of it runs).
        first_round.update(run_round([0.5], set(FIRST_STAGES)))
        forecast = load_forecast(root)[select.task]
        start = first_beta(forecast)
        logger.info(
            "forecast: D- share %.3f at beta 0, %.3f at beta 1: first probe at beta %g",
            forecast["neg_share"][0],
            forecast["neg_share"][-1],
            start,
        )
        selection = search(measure, select.forgetting_budget, start=start, max_runs=select.max_runs,
                           tolerance=select.tolerance,
                           utility_tolerance=params.tracking.gates.utility_tolerance)  # fmt: skip
        run_round(probed, {"report"}, set().union(*(beta_stages(params, b, select.seeds) for b in probed)))
        confirmation = confirm(selection, measure_again) if selection.chosen is not None else None
    check = forecast_check(forecast, selection)
    version, candidate = None, None
    if confirmation is not None and confirmation.beta is not None:
        version, candidate = register_choice(params, root, selection, confirmation, forecast, check)
    else:  # as the register stage does: no version stays `candidate` when nothing meets the budget
        tracking.use_store(store_uri(params, root))
        registry.drop_alias(params.tracking.registered_model, registry.CANDIDATE)
    text = selection_markdown(selection, forecast, check, confirmation)
    message = selection.message if confirmation is None else f"{selection.message}; {confirmation.message}"
    tries = confirmation.tries if confirmation else []
    result = {"chosen": confirmation.beta if confirmation else None, "searched": selection.chosen,
              "candidate": candidate, "version": version, "model": params.tracking.registered_model,
              "message": message, "stopped": selection.stopped,
              "probes": [p.summary(select.forgetting_budget) for p in selection.probes],
              "confirmation": [p.summary(select.forgetting_budget) for p in tries],
              "training_runs": sum(len(p.utility) for p in (*selection.probes, *tries)),
              "disagreements": selection.disagreements,
              "forecast_rank_correlation": check, "parent_run_id": parent.info.run_id}  # fmt: skip
    out = root / SELECT_DIR
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "selection.json", result)
    write_text(out / "selection.md", text + "\n")
    (logger.info if version else logger.error)("select_beta: %s", selection.message)
    return result
