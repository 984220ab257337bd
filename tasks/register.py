"""Stage `register`: every exported adapter becomes a version of params.tracking.registered_model.

Each run's plain-LoRA export (on the ORIGINAL base) is logged into that run's MLflow
child run and registered, its metrics as version tags. `full` runs are not registered:
they are not adapters, and the registry holds adapters for the base model.

Alias `candidate`: the registered run with the highest utility among those whose every
forgetting delta stays within tracking.gates.forgetting_budget (the same budgets
`promote` checks before moving `champion`). When no run is within budget, no version
holds `candidate`. Output: artifacts/registry.json (run -> version, and the candidate).
"""

from __future__ import annotations

import mlflow
from mlflow.exceptions import MlflowException

from sclora import tracking
from sclora.config import Params
from tasks.artifacts import METRICS, REGISTRY, RUN_FILE, all_runs, read_json, write_json

SUMMARY_KEYS = ("utility", "knowledge", "knowledge_logprob", "refusal_rate", "refusal_margin", "attack_success_rate",
                "benign_refusal_rate", "harmfulness_score", "harmful_rate", "forgetting")  # fmt: skip


def run(params: Params) -> dict:
    runs = [spec for spec in all_runs(params) if spec.method != "full"]
    outputs = {  # every run's outputs read before the store is touched: a missing one registers nothing
        spec.name: (read_json(spec.dir / RUN_FILE, f"run {spec.name}"),
                    read_json(spec.dir / "eval" / METRICS, f"metrics of run {spec.name}"))
        for spec in runs
    }  # fmt: skip
    tracking.use_store(params.tracking.uri)
    name = params.tracking.registered_model
    versions, eligible = {}, {}
    for spec in runs:
        summary, metrics = outputs[spec.name]
        shown = {key: metrics[key] for key in SUMMARY_KEYS if key in metrics}
        tags = {"run": spec.name, "task": spec.task, "method": spec.method, "seed": str(spec.seed),
                "beta": "none" if spec.beta is None else str(spec.beta)}  # fmt: skip
        version = tracking.register_adapter(
            spec.dir / "export", name, shown, tags, run_id=summary["mlflow_run_id"]
        )
        versions[spec.name] = version
        if within_budget(metrics, params.tracking.gates.forgetting_budget):
            eligible[spec.name] = metrics.get("utility", float("-inf"))
    candidate = max(eligible, key=eligible.get) if eligible else None
    client = mlflow.MlflowClient()
    if candidate is not None:
        client.set_registered_model_alias(name, tracking.CANDIDATE, versions[candidate])
    elif versions:
        _drop_alias(client, name, tracking.CANDIDATE)
    registry = {
        "model": name, "versions": versions, "candidate": candidate,
        "candidate_version": versions.get(candidate), "within_budget": sorted(eligible),
    }  # fmt: skip
    write_json(REGISTRY, registry)
    return registry


def within_budget(metrics: dict, budget: dict[str, float]) -> bool:
    """True when every budgeted forgetting delta is present and at most its budget."""
    deltas = metrics.get("forgetting", {})
    return all(deltas.get(metric) is not None and deltas[metric] <= limit for metric, limit in budget.items())


def _drop_alias(client: mlflow.MlflowClient, name: str, alias: str) -> None:
    try:
        client.delete_registered_model_alias(name, alias)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
