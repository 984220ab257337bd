"""A tiny pipeline workspace for the hardening tests: the testbed's tiny world, built once per session.

`project` is a fresh directory (the current directory during the test) holding
`artifacts/testbed` and a `params.yaml` of tiny settings; `stage(...)` runs
`python -m tasks ...` in-process through its `main(argv)`, as dvc.yaml calls it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from test_pipeline_dvc import TINY_TESTBED, tiny_params

REPO = Path(__file__).resolve().parent.parent
TESTBED = dict(TINY_TESTBED, pretrain_steps=2)  # the stages only need a model and data, not a good model


def project_params(root: Path) -> dict:
    """test_pipeline_dvc's tiny params, with checkpoints every step (for the crash tests) and short evaluations."""
    params = tiny_params(root)
    params["testbed"] = TESTBED
    params["train"].update(save_steps=1, save_total_limit=5)
    params["eval"]["limit"] = 6  # examples per eval task: enough to compare metrics, fast to compute
    return params


# Session fixtures imported by several test modules are set up once per module: their outputs are kept
# under the session's base temporary directory, so the second module finds them made.
@pytest.fixture(scope="session")
def built_testbed(tmp_path_factory) -> Path:
    out = tmp_path_factory.getbasetemp() / "hardening-testbed"
    if not (out / "calibration.json").is_file():
        from sclora.testbed.build import build_testbed
        from sclora.testbed.params import TestbedParams

        build_testbed(TestbedParams(**TESTBED), out)
    return out


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made (creating them takes ~10 s on a busy machine)."""
    path = tmp_path_factory.getbasetemp() / "hardening-store" / "mlflow.db"
    if not path.is_file():
        import mlflow

        path.parent.mkdir(exist_ok=True)
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments(max_results=1)
    return path


@pytest.fixture
def project(built_testbed, empty_store, tmp_path, monkeypatch) -> Iterator[Path]:
    """A workspace with the built testbed, tiny params and an empty MLflow store; the current directory."""
    shutil.copytree(built_testbed, tmp_path / "artifacts" / "testbed")
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    write_params(tmp_path, project_params(tmp_path))
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "SCLORA_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    if "mlflow" in sys.modules:  # the stages pointed MLflow (and MLFLOW_TRACKING_URI) at this project's store
        import mlflow

        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def write_params(root: Path, params: dict) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def stage(*argv: str) -> int:
    """`python -m tasks <argv>` in this process; returns the exit code."""
    from tasks.__main__ import main

    return main(list(argv))


def files(root: Path) -> dict[str, bytes]:
    """Every file under `root/artifacts` except the testbed, with its bytes (to prove nothing was written)."""
    base = root / "artifacts"
    return {
        str(path.relative_to(base)): path.read_bytes()
        for path in sorted(base.rglob("*"))
        if path.is_file() and path.relative_to(base).parts[0] != "testbed"
    }


def stage_env() -> dict[str, str]:
    """The environment of a stage subprocess: this interpreter's tools, offline, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SCLORA_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(REPO),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               MLFLOW_DISABLE_TELEMETRY="true")
    return env


def run_stage(root: Path, *argv: str, prelude: str = "", timeout: float = 300, command: str = "tasks.__main__",
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m tasks <argv>` (or another `command` module's `main`) in a subprocess in `root`;
    `prelude` is Python run first (e.g. to plant a crash), `env` is added to the stage environment."""
    code = f"{prelude}\nimport sys\nfrom {command} import main\nsys.exit(main({list(argv)!r}))\n"
    return subprocess.run([sys.executable, "-c", code], cwd=root, env={**stage_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
