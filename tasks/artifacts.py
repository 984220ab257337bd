"""Where every stage's outputs live, how runs are named, and how outputs are written atomically.

dvc.yaml spells the same paths; a run is named as DVC names its matrix item, e.g.
`benign-lora-0` (task-method-seed) or `poisoned-sclora-0.8-0` (task-sclora-beta-seed).
DVC writes a beta the way Python's str() does, so params.yaml must write betas as
floats (0.0, not 0) for the names here and in dvc.yaml to agree.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sclora.config import Params

ARTIFACTS = Path("artifacts")
PREPARED = ARTIFACTS / "prepared"
FINGERPRINTS = PREPARED / "fingerprints.json"
CAPTURE = ARTIFACTS / "capture"
SOLVE = ARTIFACTS / "solve"
RUNS = ARTIFACTS / "runs"
EVAL_BASE = ARTIFACTS / "eval" / "base"
REGISTRY = ARTIFACTS / "registry.json"
REPORT = ARTIFACTS / "report"
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
        if self.method == "sclora":
            return f"{self.task}-sclora-{beta_name(self.beta)}-{self.seed}"
        return f"{self.task}-{self.method}-{self.seed}"

    @property
    def dir(self) -> Path:
        return RUNS / self.name


def beta_name(beta: float) -> str:
    return str(float(beta))


def prepared_path(source: str) -> Path:
    return PREPARED / f"{source}.parquet"


def pos_capture_dir(task: str) -> Path:
    return CAPTURE / f"pos-{task}"


def solve_dir(beta: float) -> Path:
    return SOLVE / f"beta-{beta_name(beta)}"


def all_runs(params: Params) -> list[RunSpec]:
    """Every run the params ask for, in dvc.yaml's order (train, then train_sclora)."""
    runs = [
        RunSpec(task, method, seed)
        for task in params.data.tasks
        for method in params.train.methods
        for seed in params.train.seeds
    ]
    runs += [
        RunSpec(task, "sclora", seed, beta)
        for task in params.data.tasks
        for beta in params.solve.betas
        for seed in params.train.seeds
    ]
    return runs


def parse_run(params: Params, name: str) -> RunSpec:
    """The run a matrix item names, checked against the params (unknown task/method/beta/seed: one-line error)."""
    for run in all_runs(params):
        if run.name == name:
            return run
    known = ", ".join(run.name for run in all_runs(params))
    raise ValueError(f"unknown run '{name}': params define {known}")


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """A temporary directory beside `final` that replaces it only when the block finishes without error."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield staging
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_json(path: Path, value: object) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(staging, path)


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found; run the stage that writes it first")
    return json.loads(path.read_text(encoding="utf-8"))
