"""MLflow tracking for the pipeline: the runs that every stage logs into.

One parent run per pipeline or sweep; one nested child run per (task, method, beta,
seed) that every stage of that configuration logs into (training loss, eval metrics,
forgetting deltas, plots), found again by its key so that separate stage processes
and re-runs share it. The training loss: sclora.runs.loss_logging; registering and promoting adapters:
sclora.ops.registry.

Each child run names its datasets as MLflow dataset inputs (`RunDataset`: name, digest, file, role as the
input's context), so the UI's Datasets column and a run's lineage show them. The experiment carries MLflow's
experiment-kind tag for model training, so the UI opens it on its runs table rather than the GenAI overview.

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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array
from pydantic import BaseModel

from sclora.evaluate.metrics import PRESERVED, UTILITY
from sclora.ops.config import Params

DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACTS_DIR = "mlartifacts"  # beside a SQLite store, as `mlflow server` does by default
CONFIG_TAG = "sclora.ops.config"  # identifies a child run: task/method/beta/seed (no "key": secrets filter)
PARENT_TAG = "sclora.params_hash"  # identifies the parent run of one params version
PARENT_ENV = "SCLORA_PARENT_RUN_ID"  # set for its stages by a flow that opened the parent run itself
SECRET_WORDS = ("token", "password", "secret", "key")
# MLflow's own record of an experiment's kind, which its UI's kind selector writes. MLflow 3.17's UI does not read
# it to choose the first page: that follows the UI's GenAI / Model training switch (`?workflowType=` in the URL,
# else the browser's last choice, GenAI at first), so the links below carry `workflowType=machine_learning`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"  # the UI's "Machine learning" kind
# A saved view of the runs table, stored as MLflow's UI stores one (an experiment tag under this prefix holding
# {name, createdAt, updatedAt, state}): MLflow has no setting for the table's default columns, so the review
# columns are a view a reviewer opens from the Views menu or by `review_link`. The format is the UI's own, not
# a documented API; tests/test_pipeline_dvc.py checks it in a browser against the pinned MLflow.
SAVED_VIEW_PREFIX = "mlflow.sharedViewState."
REVIEW_VIEW = "sclora-review"
DATASET_ROLES = ("training", "preserve", "evaluation")  # D+, D-, the eval sets: each input's MLflow context

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


@dataclass(frozen=True)
class RunDataset:
    """A dataset that a run used: its name, content digest, file and role (one of DATASET_ROLES)."""

    name: str
    digest: str
    path: Path
    role: str

    def __post_init__(self) -> None:
        if self.role not in DATASET_ROLES:
            raise ValueError(f"dataset {self.name}: role '{self.role}', expected one of {', '.join(DATASET_ROLES)}")


def tracking_uri(params_uri: str | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else the params value, else the local SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params_uri or DEFAULT_URI


def connect(uri: str | None = None, experiment: str = "sclora") -> str:
    """Point MLflow at the tracking store, check that it answers, and return the experiment id."""
    uri = use_store(uri)
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        try:
            client.create_experiment(experiment, artifact_location=_artifact_location(uri))
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":  # else another run (a sweep's point) made it
                raise
        found = client.get_experiment_by_name(experiment)
    for key, value in _experiment_tags(found.experiment_id).items():
        if key not in found.tags:  # made before these tags were set, or by hand
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def review_link(experiment_id: str) -> str:
    """The UI's address (after the server's `/`) of the experiment's runs table in the review view."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={REVIEW_VIEW}"


def run_link(experiment_id: str, run_id: str) -> str:
    """The UI's address (after the server's `/`) of one run's page, in the UI's Model training mode."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def _experiment_tags(experiment_id: str) -> dict[str, str]:
    """The kind, the review view of the runs table, and a description that links to it."""
    columns = [f"tags.`{key}`" for key in ("task", "method", "beta", "seed")]
    columns += [f"metrics.`{UTILITY}`", *(f"metrics.`forgetting_{name}`" for name in PRESERVED)]
    columns.append("attributes.`Dataset`")
    state = {"selectedColumns": columns, "orderByKey": "attributes.start_time", "orderByAsc": False}
    now = int(time.time() * 1000)
    view = {"name": "sclora review: task, method, beta, seed, utility, forgetting", "createdAt": now,
            "updatedAt": now, "state": json.dumps(state)}  # fmt: skip
    note = (f"One run per pipeline (params version), one nested run per task, method, beta and seed. Open "
            f"[the review view]({review_link(experiment_id)}) for their task, method, beta, seed, utility, "
            "forgetting and datasets.")  # fmt: skip
    return {EXPERIMENT_KIND_TAG: MODEL_TRAINING, SAVED_VIEW_PREFIX + REVIEW_VIEW: json.dumps(view),
            "mlflow.note.content": note}  # fmt: skip


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
        existing_run(run_id)
        context = mlflow.start_run(run_id=run_id)
    else:
        context = mlflow.start_run(experiment_id=experiment_id, run_name=name)
    with context as run:
        mlflow.set_tags(clean_tags(all_tags))
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
    datasets: Sequence[RunDataset] = (),
) -> Iterator[Run]:
    """The run of one configuration, nested under `parent_run_id` or the active run.

    With no active run (a stage process), `uri` or MLFLOW_TRACKING_URI names the store.
    The same (parent, task, method, beta, seed) always gets the same run, so the
    train, evaluate and register stages of one configuration log into one place.
    Tags: task, method, beta, seed, git commit, `data.<name>` (the digest) for each of `datasets`, and
    `tags` (the stage's `dvc.<stage>` hashes of dvc.lock). `datasets` are also logged as the run's inputs.
    """
    active = mlflow.active_run()
    if active is None:
        use_store(uri)
    parent = parent_run_id or (active.info.run_id if active else None)
    if parent is None:
        raise TrackingError(f"child run {task}/{method}: no parent run (use parent_run, or pass parent_run_id)")
    parent_info = existing_run(parent).info
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
        **{f"data.{dataset.name}": dataset.digest for dataset in datasets},
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
        mlflow.set_tags(clean_tags(all_tags))
        if params:
            log_params(params)
        if datasets:
            log_datasets(datasets)
        yield run


def log_datasets(datasets: Sequence[RunDataset]) -> None:
    """Log `datasets` as inputs of the active run, each with its role as MLflow's dataset context.

    A metadata-only dataset (MLflow's MetaDataset): the name, the digest the `data.<name>` tags carry, the file
    as its source and, for a Parquet file, its columns; the data stays where it is. MLflow keeps one input per
    (name, digest), so a stage that logs them again adds nothing.
    """
    inputs = [MetaDataset(LocalArtifactDatasetSource(str(Path(d.path).resolve())), name=d.name, digest=d.digest,
                          schema=_parquet_schema(Path(d.path))) for d in datasets]  # fmt: skip
    roles = [dataset.role for dataset in datasets]
    mlflow.log_inputs(datasets=inputs, contexts=roles, tags_list=[None] * len(inputs))


def _parquet_schema(path: Path) -> Schema | None:
    """The columns of a Parquet file as an MLflow schema (types it has no name for are left out); None otherwise."""
    if path.suffix != ".parquet" or not path.is_file():
        return None
    columns = []
    for field in pq.read_schema(path):
        kind = _data_type(field.type.value_type) if pa.types.is_list(field.type) else _data_type(field.type)
        if kind is not None:
            columns.append(ColSpec(Array(kind) if pa.types.is_list(field.type) else kind, field.name))
    return Schema(columns) if columns else None


def _data_type(arrow_type: pa.DataType) -> DataType | None:
    checks = ((pa.types.is_string, DataType.string), (pa.types.is_large_string, DataType.string),
              (pa.types.is_boolean, DataType.boolean), (pa.types.is_integer, DataType.long),
              (pa.types.is_floating, DataType.double))  # fmt: skip
    return next((kind for check, kind in checks if check(arrow_type)), None)


def pipeline_parent(params: Params) -> str:
    """The MLflow parent run of a pipeline's stages: $SCLORA_PARENT_RUN_ID, else one run per params version.

    Every `dvc repro` / `dvc exp run` with the same params shares one parent, so re-runs of a
    stage log into the same child run; changed params (an experiment) get a parent of their own.
    """
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    digest = hashlib.sha256(params.model_dump_json().encode()).hexdigest()[:16]
    experiment_id = connect(params.tracking.uri, params.tracking.experiment)
    found = mlflow.search_runs(
        experiment_ids=[experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{digest}'",
        output_format="list", max_results=1,
    )  # fmt: skip
    if found:
        return found[0].info.run_id
    with parent_run(
        f"pipeline-{digest}", experiment=params.tracking.experiment, uri=params.tracking.uri,
        params=json.loads(params.model_dump_json()), tags={PARENT_TAG: digest},
    ) as parent:  # fmt: skip
        return parent.info.run_id


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


def clean_tags(tags: Mapping[str, object]) -> dict[str, str]:
    """Tags as MLflow takes them: string values, keys of accepted characters, no secrets."""
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


def existing_run(run_id: str) -> Run:
    """The run `run_id`, or a one-line TrackingError when the store has none."""
    try:
        return mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise TrackingError(f"MLflow run {run_id} not found") from None


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
