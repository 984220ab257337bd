"""The model registry: exported plain-LoRA adapters as versions of a registered model, and their promotion.

`register_adapter` makes a version with alias `candidate`; `promote` moves `champion` to it only when
the gates pass. The forgetting budget is one rule, `overshoot`, which the register stage applies to
eval metrics when it picks the candidate and `promote` applies to a version's metrics. Connect first
(`sclora.ops.tracking.use_store`, or an open run).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from sclora.evaluate.metrics import BY_NAME, METRICS, UTILITY
from sclora.method.export import is_residual_init
from sclora.ops.config import PromotionGates
from sclora.ops.tracking import TrackingError, clean_tags, existing_run, metric_values, run_link

ADAPTER_ARTIFACT = "adapter"
CANDIDATE, CHAMPION = "candidate", "champion"
BASE = "base"  # the base model's column in a version's description
LINEAGE_TAGS = ("git_commit", "task", "method", "beta", "seed")


def overshoot(metrics: Mapping, budget: Mapping[str, float]) -> dict[str, float]:
    """How far each budgeted forgetting delta of `metrics` ({"forgetting": {metric: delta}}, as the evaluation
    writes them) exceeds its budget: only those that do; a missing delta is infinitely over."""
    deltas = metrics.get("forgetting", {})
    over = {metric: (math.inf if deltas.get(metric) is None else deltas[metric] - limit)
            for metric, limit in budget.items()}  # fmt: skip
    return {metric: value for metric, value in over.items() if value > 0}


def within_budget(metrics: Mapping, budget: Mapping[str, float]) -> bool:
    """True when every budgeted forgetting delta is present and at most its budget."""
    return not overshoot(metrics, budget)


def register_adapter(
    adapter_dir: str | Path,
    name: str,
    metrics: Mapping,
    tags: Mapping[str, str] | None = None,
    *,
    run_id: str | None = None,
    note: str = "",
    base: Mapping | None = None,
) -> str:
    """Register an exported plain-LoRA adapter directory as a version of `name`; returns the version.

    A run registered before keeps its version (nothing new is logged): re-running a
    register stage does not pile up copies of one adapter.

    The directory is logged as the `adapter` artifact of `run_id` (default: the active
    run), the version gets alias `candidate`, its metrics and the run's lineage (git commit,
    dvc.*, data.*, task, method, beta, seed) as tags, and a description (`version_description`)
    that sets it beside `base` (the base model's metrics, as the evaluation writes them) and the
    current champion, then `note` (markdown: why this version).
    """
    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{adapter_dir}: not a PEFT adapter directory (no adapter_config.json)")
    init = json.loads(config_file.read_text(encoding="utf-8")).get("init_lora_weights", True)
    if is_residual_init(init):
        raise ValueError(
            f"{adapter_dir}: adapter trained on residual weights (init_lora_weights={init!r}) means nothing on the "
            "original base; register the plain LoRA that sclora.method.export.export_lora writes"
        )
    active = mlflow.active_run()
    run_id = run_id or (active.info.run_id if active else None)
    if run_id is None:
        raise TrackingError(f"register_adapter {name}: no active MLflow run and no run_id given")
    client = mlflow.MlflowClient()
    registered = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if registered:  # this run is registered already: the same adapter, the same version
        latest = max(registered, key=lambda v: int(v.version))
        version = int(latest.version)
        if note:  # registered again for another reason (a budget search): the version says the latest one
            client.update_model_version(name, str(version), description=f"{latest.description or ''}\n\n{note}")
            for key, value in clean_tags(tags or {}).items():
                client.set_model_version_tag(name, str(version), key, value)
        client.set_registered_model_alias(name, CANDIDATE, str(version))
        return str(version)
    client.log_artifacts(run_id, str(adapter_dir), artifact_path=ADAPTER_ARTIFACT)
    run = existing_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{ADAPTER_ARTIFACT}"
    # The version carries its run's lineage, so the registry alone says where it came from.
    lineage = {k: v for k, v in run.data.tags.items() if k in LINEAGE_TAGS or k.startswith(("dvc.", "data."))}
    values = metric_values(metrics)
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(name, description="Plain-LoRA adapters on the original base model")
        except MlflowException as race:
            if race.error_code != "RESOURCE_ALREADY_EXISTS":  # else another run (a sweep's point) made it
                raise
    # `+ 0.0` turns a negative zero (base - run of equal values, times -1) into 0.0: the UI shows tags as written.
    version_tags = {**lineage, **{key: repr(value + 0.0) for key, value in values.items()}, **clean_tags(tags or {})}
    description = version_description(name, run_id, values, base) + (f"\n\n{note}" if note else "")
    version = client.create_model_version(name, source, run_id=run_id, tags=clean_tags(version_tags),
                                          description=description)  # fmt: skip
    client.set_registered_model_alias(name, CANDIDATE, version.version)
    return str(version.version)


def drop_alias(name: str, alias: str) -> None:
    """Remove `alias` from registered model `name` (nothing to do when neither exists)."""
    try:
        mlflow.MlflowClient().delete_registered_model_alias(name, alias)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise


def version_description(name: str, run_id: str, metrics: Mapping[str, float], base: Mapping | None = None) -> str:
    """The markdown a reviewer reads on a version's page: the candidate beside the base model and the champion.

    One row per metric (sclora.evaluate.metrics' order): its level on the base model, the candidate and the current
    `champion`, and the candidate's and champion's forgetting against the base (positive: forgot). Then the
    source run (a link the UI opens), its git commit and the dvc.lock hashes of the stages behind it.
    """
    run = existing_run(run_id)
    levels = {BASE: metric_values(base or {}), CANDIDATE: dict(metrics)}
    champion = _alias_version(name, CHAMPION)
    columns = [(BASE, "base model"), (CANDIDATE, "candidate")]
    if champion is not None:
        levels[CHAMPION] = _version_metrics(champion)
        columns.append((CHAMPION, f"champion (version {champion.version})"))
    shown = [m.name for m in METRICS if any(m.name in values or f"forgetting_{m.name}" in values
                                            for values in levels.values())]  # fmt: skip
    header = ["metric", *(label for _, label in columns)]
    header += [f"{key} forgetting" for key, _ in columns if key != BASE]
    lines = [f"{_run_link(run)}: {_config(run.data.tags)}.", ""]
    if champion is None:
        lines += [f"No `{CHAMPION}` yet: the candidate is compared with the base model alone.", ""]
    lines += ["Forgetting is the loss against the base model in the metric's good direction: positive means "
              "forgotten, 0 kept, negative improved.", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    for metric in shown:
        cells = [_number(levels[key].get(metric)) for key, _ in columns]
        cells += [_number(levels[key].get(f"forgetting_{metric}"), signed=True) if metric != UTILITY else "-"
                  for key, _ in columns if key != BASE]  # fmt: skip
        better = "higher" if BY_NAME[metric].higher_is_better else "lower"
        lines.append(f"| {metric} ({better} is better) | " + " | ".join(cells) + " |")
    lines += ["", *_lineage(run.data.tags)]
    return "\n".join(lines) + "\n"


def promote(name: str, version: str | int, gates: PromotionGates) -> tuple[bool, list[str]]:
    """Move `champion` to `version` when the gates pass.

    Returns (accepted, reasons): the failed checks when rejected, the passed ones when
    accepted. Gates: utility >= champion's utility - tolerance (no champion: passes);
    each `forgetting_<metric>` within its budget (`overshoot`; a budgeted metric the version lacks fails).
    """
    client = mlflow.MlflowClient()
    candidate = _get_version(name, str(version))
    mine = _version_metrics(candidate)
    champion = _alias_version(name, CHAMPION)
    passed, failed = [], []

    if champion is None:
        passed.append(f"no {CHAMPION} yet")
    elif champion.version == candidate.version:
        passed.append(f"version {candidate.version} is already {CHAMPION}")
    else:
        theirs = _version_metrics(champion)
        if "utility" not in mine or "utility" not in theirs:
            lacking = candidate.version if "utility" not in mine else champion.version
            failed.append(f"utility missing on version {lacking}")
        else:
            floor = theirs["utility"] - gates.utility_tolerance
            mine_text, theirs_text = _number(mine["utility"]), _number(theirs["utility"])
            check = f"utility {mine_text} vs {CHAMPION} {theirs_text} - {gates.utility_tolerance:g}"
            (passed if mine["utility"] >= floor else failed).append(check)
    budget = gates.forgetting_budget
    deltas = {metric: mine.get(f"forgetting_{metric}") for metric in budget}  # the version's tags are flat
    over = overshoot({"forgetting": deltas}, budget)
    for metric, limit in sorted(budget.items()):
        if deltas[metric] is None:
            failed.append(f"forgetting_{metric} missing on version {candidate.version}")
        else:
            check = f"forgetting_{metric} {_number(deltas[metric])} vs budget {limit:g}"
            (failed if metric in over else passed).append(check)

    accepted = not failed
    if accepted:
        client.set_registered_model_alias(name, CHAMPION, candidate.version)
    client.set_model_version_tag(name, candidate.version, "promotion", "accepted" if accepted else "rejected")
    return accepted, passed if accepted else failed


def _get_version(name: str, version: str):
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(f"registered model '{name}' not found") from None
        raise
    try:
        return client.get_model_version(name, version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise TrackingError(f"registered model '{name}' has no version {version}") from None
        raise


def _alias_version(name: str, alias: str):
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None  # no such alias (yet)
        raise


def _version_metrics(version) -> dict[str, float]:
    values = {}
    for key, text in version.tags.items():
        try:
            values[key] = float(text)
        except ValueError:
            continue  # lineage tags (git commit, hashes) are not metrics
    return values


def _number(value: float | None, signed: bool = False) -> str:
    """Four decimals; a value that rounds to zero is written 0.0000, never -0.0000 (nor +0.0000)."""
    if value is None:
        return "n/a"
    text = f"{value:+.4f}" if signed else f"{value:.4f}"
    return "0.0000" if float(text) == 0 else text


def _run_link(run) -> str:
    """A link to the run's page in MLflow's UI (relative: it works on whichever server shows the description)."""
    label = run.data.tags.get("mlflow.runName", run.info.run_id)
    return f"Source run [{label}]({run_link(run.info.experiment_id, run.info.run_id)})"


def _config(tags: Mapping[str, str]) -> str:
    shown = [f"{key} {tags[key]}" for key in ("task", "method", "beta", "seed") if key in tags]
    return ", ".join(shown) if shown else "no configuration tags"


def _lineage(tags: Mapping[str, str]) -> list[str]:
    """The git commit and the dvc.lock hash of each stage behind the run, as markdown lines."""
    lines = [f"Git commit: `{tags['git_commit']}`" if "git_commit" in tags else "Git commit: not recorded"]
    stages = sorted((key.removeprefix("dvc."), value) for key, value in tags.items() if key.startswith("dvc."))
    if stages:
        lines += ["", "| stage (dvc.lock) | hash |", "|---|---|"]
        lines += [f"| {stage} | `{digest}` |" for stage, digest in stages]
    else:
        lines += ["", "dvc.lock: no stage hashes recorded (the run was not made by `dvc repro`)"]
    return lines
