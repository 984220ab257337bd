"""MLflow tracking and model registry for the pipeline.

One parent run per pipeline or sweep; one nested child run per (task, method, beta,
seed) that every stage of that configuration logs into (training loss, eval metrics,
forgetting deltas, plots), found again by its key so that separate stage processes
and re-runs share it. The exported plain-LoRA adapter becomes a registered model
version with alias `candidate`; `promote` moves `champion` only when the gates pass.

The tracking URI comes from MLFLOW_TRACKING_URI, else from params (`tracking.uri`,
default `sqlite:///mlflow.db`, artifacts beside the database in `mlartifacts/`).
`parent_run`/`child_run` connect by themselves; a process that only registers or
promotes calls `use_store(params.tracking.uri)` first.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import yaml
from mlflow.entities import Metric, Run
from mlflow.exceptions import MlflowException
from pydantic import BaseModel
from transformers import TrainerCallback

from sclora.config import PromotionGates  # noqa: F401 - promote() takes it; importable from here

DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACTS_DIR = "mlartifacts"  # beside a SQLite store, as `mlflow server` does by default
CONFIG_TAG = "sclora.config"  # identifies a child run: task/method/beta/seed (no "key": secrets filter)
ADAPTER_ARTIFACT = "adapter"
CANDIDATE, CHAMPION = "candidate", "champion"
LINEAGE_TAGS = ("git_commit", "task", "method", "beta", "seed")
SECRET_WORDS = ("token", "password", "secret", "key")

# One quick attempt when checking that a server answers: MLflow's defaults (7 retries,
# 120 s timeout, exponential backoff) would hang for minutes on a wrong URI.
_PROBE_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class TrackingError(RuntimeError):
    """A tracking or registry operation that cannot proceed; the message is one line."""


def tracking_uri(params_uri: str | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else the params value, else the local SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params_uri or DEFAULT_URI


def connect(uri: str | None = None, experiment: str = "sclora") -> str:
    """Point MLflow at the tracking store, check that it answers, and return the experiment id."""
    uri = use_store(uri)
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(experiment, artifact_location=_artifact_location(uri))
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(experiment).experiment_id  # another run (a sweep's point) made it


def use_store(uri: str | None = None) -> str:
    """Set the tracking and registry URI (see `tracking_uri`), failing fast if the store does not answer."""
    uri = tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with _env(_PROBE_ENV):
            mlflow.MlflowClient().search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - any failure here means the store is unusable
        raise TrackingError(f"MLflow tracking store {uri} unreachable: {_first_line(error)}") from None
    return uri


@contextmanager
def parent_run(
    name: str,
    *,
    experiment: str = "sclora",
    uri: str | None = None,
    run_id: str | None = None,
    params: Mapping | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[Run]:
    """A top-level run for one pipeline or sweep; `run_id` resumes an existing one (from another process)."""
    experiment_id = connect(uri, experiment)
    all_tags = {**_git_tags(), **(tags or {})}
    if run_id is not None:
        _existing_run(run_id)
        context = mlflow.start_run(run_id=run_id)
    else:
        context = mlflow.start_run(experiment_id=experiment_id, run_name=name)
    with context as run:
        mlflow.set_tags(_clean_tags(all_tags))
        if params:
            log_params(params)
        yield run


@contextmanager
def child_run(
    task: str,
    method: str,
    beta: float | None,
    seed: int,
    *,
    parent_run_id: str | None = None,
    uri: str | None = None,
    params: Mapping | None = None,
    tags: Mapping[str, str] | None = None,
    dvc_lock: str | Path | None = None,
    stages: list[str] | tuple[str, ...] = (),
    fingerprints: Mapping[str, str] | None = None,
) -> Iterator[Run]:
    """The run of one configuration, nested under `parent_run_id` or the active run.

    With no active run (a stage process), `uri` or MLFLOW_TRACKING_URI names the store.
    The same (parent, task, method, beta, seed) always gets the same run, so the
    train, evaluate and register stages of one configuration log into one place.
    Tags: task, method, beta, seed, git commit, the `dvc.lock` hash of each of
    `stages`, and `data.<name>` for each dataset fingerprint.
    """
    active = mlflow.active_run()
    if active is None:
        use_store(uri)
    parent = parent_run_id or (active.info.run_id if active else None)
    if parent is None:
        raise TrackingError(f"child run {task}/{method}: no parent run (use parent_run, or pass parent_run_id)")
    parent_info = _existing_run(parent).info
    beta_text = "none" if beta is None else f"{float(beta):g}"
    key = f"{task}/{method}/{beta_text}/{seed}"
    found = mlflow.search_runs(
        experiment_ids=[parent_info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.`{CONFIG_TAG}` = '{key}'",
        output_format="list",
        max_results=1,
    )
    all_tags = {
        CONFIG_TAG: key,
        "task": task,
        "method": method,
        "beta": beta_text,
        "seed": str(seed),
        **_git_tags(),
        **(dvc_stage_hashes(dvc_lock, stages) if dvc_lock else {}),
        **{f"data.{name}": value for name, value in (fingerprints or {}).items()},
        **(tags or {}),
    }
    if active is not None and active.info.run_id != parent:
        raise TrackingError(f"child run {key}: run {active.info.run_id} is active, not the parent {parent}")
    nested = active is not None  # else the parent lives in another process: only link to it
    if found:
        context = mlflow.start_run(run_id=found[0].info.run_id, nested=nested)
    else:
        context = mlflow.start_run(
            experiment_id=parent_info.experiment_id,
            run_name=key.replace("/", "-"),
            nested=nested,
            parent_run_id=parent,
        )
    with context as run:
        mlflow.set_tags(_clean_tags(all_tags))
        if params:
            log_params(params)
        yield run


def log_params(params: Mapping | BaseModel, prefix: str = "") -> dict[str, str]:
    """Log nested params flattened to dotted keys, leaving out anything that looks like a secret."""
    flat = {key: value for key, value in _flatten(params, prefix).items() if not is_secret(key)}
    logged = {_clean_key(key): _param_value(value) for key, value in flat.items()}
    if logged:
        mlflow.log_params(logged)
    return logged


def log_metrics(metrics: Mapping, step: int | None = None) -> dict[str, float]:
    """Log eval metrics; nested ones flatten to `<key>_<name>` (forgetting deltas: `forgetting_<metric>`).

    Missing values (None, NaN) are left out rather than logged as NaN.
    """
    flat = metric_values(metrics)
    if flat:
        mlflow.log_metrics(flat, step=step)
    return flat


def log_files(paths: list[str | Path] | tuple[str | Path, ...], artifact_path: str | None = None) -> None:
    """Log files or directories (samples, plots) as artifacts of the active run."""
    for path in map(Path, paths):
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path="/".join(filter(None, [artifact_path, path.name])))
        elif path.is_file():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory to log")


class MlflowLossCallback(TrainerCallback):
    """Logs `train_loss` (and learning rate, grad norm) at every logged training step into one run.

    The run is the active run when the callback is made, or `run_id`; logging by id keeps
    it right even if the active run changes while the Trainer runs. Steps are sent in
    batches of `flush_every` (and at every checkpoint and at the end): one store write per
    metric per step cost more than the training step itself on a small model.
    """

    def __init__(self, run_id: str | None = None, flush_every: int = 50):
        active = mlflow.active_run()
        if run_id is None and active is None:
            raise TrackingError("MlflowLossCallback: no active MLflow run and no run_id given")
        self.run_id = run_id or active.info.run_id
        self.client = mlflow.MlflowClient()
        self.flush_every = flush_every
        self.pending: list[Metric] = []
        self.pending_steps = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        values = {"train_loss": logs["loss"], "learning_rate": logs.get("learning_rate"),
                  "grad_norm": logs.get("grad_norm")}
        now = int(time.time() * 1000)
        self.pending += [Metric(key, value, now, state.global_step) for key, value in metric_values(values).items()]
        self.pending_steps += 1
        if self.pending_steps >= self.flush_every:
            self.flush()

    def on_save(self, args, state, control, **kwargs):
        self.flush()  # what a resumed run will not log again is in the store

    def on_train_end(self, args, state, control, **kwargs):
        self.flush()

    def flush(self) -> None:
        # log_batch takes at most 1000 metrics per call.
        while self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending[:1000])
            self.pending = self.pending[1000:]
        self.pending_steps = 0


def register_adapter(
    adapter_dir: str | Path,
    name: str,
    metrics: Mapping,
    tags: Mapping[str, str] | None = None,
    *,
    run_id: str | None = None,
    note: str = "",
) -> str:
    """Register an exported plain-LoRA adapter directory as a version of `name`; returns the version.

    A run registered before keeps its version (nothing new is logged): re-running a
    register stage does not pile up copies of one adapter.

    The directory is logged as the `adapter` artifact of `run_id` (default: the active
    run), the version gets alias `candidate`, its metrics and the run's lineage (git commit,
    dvc.*, data.*, task, method, beta, seed) as tags, and a description comparing it with
    the current champion, then `note` (markdown: why this version).
    """
    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{adapter_dir}: not a PEFT adapter directory (no adapter_config.json)")
    init = json.loads(config_file.read_text(encoding="utf-8")).get("init_lora_weights", True)
    if init not in (True, "gaussian"):  # the same rule as sclora.export.is_residual
        raise ValueError(
            f"{adapter_dir}: adapter trained on residual weights (init_lora_weights={init!r}) means nothing on the "
            "original base; register the plain LoRA that sclora.export.export_lora writes"
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
            for key, value in _clean_tags(tags or {}).items():
                client.set_model_version_tag(name, str(version), key, value)
        client.set_registered_model_alias(name, CANDIDATE, str(version))
        return str(version)
    client.log_artifacts(run_id, str(adapter_dir), artifact_path=ADAPTER_ARTIFACT)
    run = _existing_run(run_id)
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
    version_tags = {**lineage, **{key: repr(value) for key, value in values.items()}, **_clean_tags(tags or {})}
    description = champion_comparison(name, values) + (f"\n\n{note}" if note else "")
    version = client.create_model_version(name, source, run_id=run_id, tags=_clean_tags(version_tags),
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


def champion_comparison(name: str, metrics: Mapping[str, float]) -> str:
    """A short markdown table of `metrics` (utility and forgetting deltas) beside the current champion's."""
    champion = _alias_version(name, CHAMPION)
    shown = [key for key in metrics if key == "utility" or key.startswith("forgetting_")]
    if champion is None:
        rows = "\n".join(f"| {key} | {metrics[key]:.4f} |" for key in shown)
        return f"No `{CHAMPION}` yet: nothing to compare with.\n\n| metric | candidate |\n|---|---|\n{rows}\n"
    theirs = _version_metrics(champion)
    lines = [
        f"Compared with `{CHAMPION}` (version {champion.version}); forgetting: lower is better.",
        "",
        "| metric | candidate | champion | difference |",
        "|---|---|---|---|",
    ]
    for key in sorted(set(shown) | {k for k in theirs if k == "utility" or k.startswith("forgetting_")}):
        mine, other = metrics.get(key), theirs.get(key)
        diff = f"{mine - other:+.4f}" if mine is not None and other is not None else "n/a"
        lines.append(f"| {key} | {_fmt(mine)} | {_fmt(other)} | {diff} |")
    return "\n".join(lines) + "\n"


def promote(name: str, version: str | int, gates: PromotionGates) -> tuple[bool, list[str]]:
    """Move `champion` to `version` when the gates pass.

    Returns (accepted, reasons): the failed checks when rejected, the passed ones when
    accepted. Gates: utility >= champion's utility - tolerance (no champion: passes);
    each `forgetting_<metric>` <= its budget (a budgeted metric the version lacks fails).
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
            check = f"utility {mine['utility']:.4f} vs {CHAMPION} {theirs['utility']:.4f} - {gates.utility_tolerance:g}"
            (passed if mine["utility"] >= floor else failed).append(check)
    for metric, budget in sorted(gates.forgetting_budget.items()):
        delta = mine.get(f"forgetting_{metric}")
        if delta is None:
            failed.append(f"forgetting_{metric} missing on version {candidate.version}")
        else:
            (passed if delta <= budget else failed).append(f"forgetting_{metric} {delta:.4f} vs budget {budget:g}")

    accepted = not failed
    if accepted:
        client.set_registered_model_alias(name, CHAMPION, candidate.version)
    client.set_model_version_tag(name, candidate.version, "promotion", "accepted" if accepted else "rejected")
    return accepted, passed if accepted else failed


def locked_stages(dvc_lock: str | Path) -> dict[str, dict]:
    """The `stages` of a `dvc.lock`, by name. With libyaml's C loader where PyYAML has it: the lock of the default
    pipeline is ~4500 lines, which the pure-Python loader takes about 2 s to read."""
    path = Path(dvc_lock)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dvc.lock not found")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return (yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}).get("stages", {})


def dvc_stage_hashes(dvc_lock: str | Path, stages: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`dvc.<stage>` -> a hash of that stage's `dvc.lock` entry (changes with its deps, params or outs)."""
    path = Path(dvc_lock)
    locked = locked_stages(path)
    hashes = {}
    for stage in stages:
        if stage not in locked:
            raise KeyError(f"{path}: no stage '{stage}'")
        entry = json.dumps(locked[stage], sort_keys=True, default=str)
        hashes[_clean_key(f"dvc.{stage}")] = hashlib.sha256(entry.encode()).hexdigest()[:16]
    return hashes


def is_secret(key: str) -> bool:
    """True for a params key that may hold a credential (token, password, secret, key)."""
    return any(word in key.lower() for word in SECRET_WORDS)


def metric_values(metrics: Mapping) -> dict[str, float]:
    """Numeric metrics flattened with `_` (forgetting {m: d} -> forgetting_m); None and NaN left out."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}_{sub}": v for sub, v in metric_values(value).items()})
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int | float) and math.isfinite(value):
            flat[_clean_key(str(key))] = float(value)
    return flat


def _flatten(tree: Mapping | BaseModel, prefix: str) -> dict[str, object]:
    if isinstance(tree, BaseModel):
        tree = tree.model_dump()
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping | BaseModel):
            flat.update(_flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def _param_value(value: object) -> str:
    text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."  # MLflow's limit on a param value


def _clean_key(key: str) -> str:
    return re.sub(r"[^\w./\- ]", "_", key)  # the characters MLflow accepts in keys on every OS


def _clean_tags(tags: Mapping[str, object]) -> dict[str, str]:
    return {_clean_key(str(key)): str(value) for key, value in tags.items() if not is_secret(str(key))}


def _git_tags() -> dict[str, str]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}  # not a git checkout (or no git): nothing to tag
    return {"git_commit": commit} if commit else {}


def _artifact_location(uri: str) -> str | None:
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None  # servers and file stores choose their own
    database = uri.removeprefix("sqlite:///")
    if database in ("", ":memory:"):
        return None
    return (Path(database).resolve().parent / ARTIFACTS_DIR).as_uri()


def _existing_run(run_id: str) -> Run:
    try:
        return mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise TrackingError(f"MLflow run {run_id} not found") from None


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


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@contextmanager
def _env(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
