"""Fixtures shared by the test modules; plain helpers live in stage_project.py, tiny_models.py and infra_servers.py.

Whatever costs seconds to make (the tiny testbed, a migrated MLflow store, a `dvc repro` of the real dvc.yaml)
is made once per session; tests get a copy, or a fresh directory around it.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from infra_servers import base_env
from stage_project import TESTBED, copy_repo, project_params, run, tiny_params, write_params


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with a whole-pipeline test first, then files with real servers: `make test` hands whole files to its
    processes in this order, so the files that take minutes start at once rather than last. In-file order stays."""

    def weight(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("services") else 2

    heaviest = {}
    for item in items:
        heaviest[item.path] = min(heaviest.get(item.path, 2), weight(item))
    items.sort(key=lambda item: heaviest[item.path])  # a stable sort: each file's own order is kept


@pytest.fixture(scope="session")
def built_testbed(tmp_path_factory) -> Path:
    """The tiny testbed of the stage tests, built once."""
    from sclora.testbed.build import build_testbed
    from sclora.testbed.params import TestbedParams

    out = tmp_path_factory.mktemp("stage-testbed")
    build_testbed(TestbedParams(**TESTBED), out)
    return out


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made (creating them takes seconds); tests copy it."""
    import mlflow

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
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


@dataclass(frozen=True)
class Repro:
    """A git + DVC copy of the repository after `dvc repro` on tiny params: `work`, its environment, the output."""

    work: Path
    env: dict[str, str]
    output: str


@pytest.fixture(scope="session")
def tiny_repro(tmp_path_factory) -> Repro:
    """The repository's dvc.yaml run once on `tiny_params` (MLflow in the workspace's parent).

    test_pipeline_dvc checks and changes this very workspace; tests that only need its outputs copy `work`
    (`shutil.copytree`) and write their own params.yaml: DVC then reruns only the stages those params change.
    """
    root = tmp_path_factory.mktemp("tiny-repro")
    work = root / "repo"
    work.mkdir()
    copy_repo(work)
    write_params(work, tiny_params(root))
    env = base_env()
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-q", "-m", "copy"]):  # fmt: skip
        run(command, work, env)
    return Repro(work, env, run(["dvc", "repro"], work, env))


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    """Prefect's test server (a temporary SQLite database) for the flows of one test module."""
    import flows  # noqa: F401 - Prefect's local settings before Prefect is imported

    # isort: split
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
