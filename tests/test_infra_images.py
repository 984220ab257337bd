"""The container images of infra/: the GPU job image and the team MLflow server.

They need a Docker engine (and the registries their base images come from). Where `docker` has no
engine, as on these development machines, each test is skipped with the engine's own answer.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.services  # a container engine
REPO = Path(__file__).resolve().parent.parent


def engine_missing() -> str | None:
    """Why Docker cannot build here, or None when an engine answers."""
    if shutil.which("docker") is None:
        return "no docker command on PATH"
    result = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        return f"Docker has no engine here: {lines[-1] if lines else 'docker info failed'}"
    return None


@pytest.fixture(scope="module")
def docker() -> None:
    reason = engine_missing()
    if reason:
        pytest.skip(reason)


def build(dockerfile: Path, context: Path, tag: str) -> None:
    result = subprocess.run(["docker", "build", "-f", str(dockerfile), "-t", tag, str(context)],
                            capture_output=True, text=True, timeout=3600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def in_image(tag: str, *command: str) -> str:
    result = subprocess.run(["docker", "run", "--rm", tag, *command], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_the_job_image_has_the_project_at_its_pins(docker):
    build(REPO / "infra" / "docker" / "Dockerfile", REPO, "sclora-test:job")
    versions = in_image("sclora-test:job", "python", "-c", (
        "from importlib.metadata import version as v; "
        "print(' '.join(f'{p}=={v(p)}' for p in ('torch', 'transformers', 'peft', 'prefect', 'dvc', 'mlflow')))"
    )).split()  # fmt: skip
    pins = (REPO / "pyproject.toml").read_text()
    for pin in versions:
        assert f'"{pin}"' in pins, pin
    assert "usage" in in_image("sclora-test:job", "sclora", "--help")
    in_image("sclora-test:job", "git", "--version")  # Prefect's git_clone pull step
    in_image("sclora-test:job", "python", "-c", "import dvc_s3")  # the team's S3 remote


def test_the_mlflow_image_has_the_postgres_and_s3_clients(docker):
    build(REPO / "infra" / "mlflow" / "Dockerfile", REPO / "infra" / "mlflow", "sclora-test:mlflow")
    in_image("sclora-test:mlflow", "python", "-c", "import psycopg2, boto3, flask_wtf, mlflow.server.auth")
