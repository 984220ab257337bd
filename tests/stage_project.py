"""Helpers for tests that run the pipeline's stages on the testbed's tiny world (the fixtures are in conftest.py).

`tiny_params(root)` is params.yaml shrunk to a tiny grid with MLflow in `root/mlflow.db`; `copy_repo(dest)` copies
the repository as git sees it; `stage(...)` runs `python -m tasks ...` in-process through its `main(argv)`, as
dvc.yaml calls it, and `run_stage(...)` in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent

# The testbed's tiny world (tests/test_testbed.py pretrains it longer).
TINY_TESTBED = dict(
    entities=12,
    attributes=["city", "color"],
    phrasings=2,
    harmful_categories=["violence", "theft"],
    benign_categories=["cleaning", "art"],
    targets=4,
    task_words=8,
    finetune_size=40,
    preserve_size=16,
    eval_size=20,
    copy_examples=50,
    hidden_size=32,
    layers=1,
    heads=2,
    intermediate_size=64,
    pretrain_steps=10,
    pretrain_batch_size=16,
    poison_rate=0.1,
)
TESTBED = dict(TINY_TESTBED, pretrain_steps=2)  # the stages only need a model and data, not a good model


def tiny_params(tmp: Path) -> dict:
    """params.yaml on a tiny grid: one task, lora and pissa, SC-LoRA at one beta, a few steps; MLflow in `tmp`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["testbed"] = TINY_TESTBED
    params["data"]["finetune"] = {"benign": "finetune_benign"}
    params["adapter"].update(rank=2, alpha=4.0)
    params["capture"].update(samples_pos=16, samples_neg=16, batch_size=8, samples_per_shard=8, covariance=True)
    params["solve"]["betas"] = [0.8]
    params["train"].update(methods=["lora", "pissa"], seeds=[0], lr=1.0e-3, batch_size=8, max_steps=3, save_steps=2,
                           max_length=32)  # fmt: skip
    params["eval"].update(batch_size=16, max_new_tokens=4)
    params["tracking"]["uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    return params


def copy_repo(dest: Path) -> None:
    """The repository's files as git sees them (tracked, and new files not ignored), without DVC state."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    for name in listed:
        if name.startswith(".dvc/") or name == "dvc.lock" or not (REPO / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)


def run(command: list[str], cwd: Path, env: dict) -> str:
    """`command` in `cwd`; its output, or a failure with the output's end."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed ({result.returncode}):\n{output[-6000:]}"
    return output


def project_params(root: Path) -> dict:
    """The tiny params, with checkpoints every step (for the crash tests) and short evaluations."""
    params = tiny_params(root)
    params["testbed"] = TESTBED
    params["train"].update(save_steps=1, save_total_limit=5)
    params["eval"]["limit"] = 6  # examples per eval task: enough to compare metrics, fast to compute
    return params


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
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    return env


def run_stage(
    root: Path,
    *argv: str,
    prelude: str = "",
    timeout: float = 300,
    command: str = "tasks.__main__",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`python -m tasks <argv>` (or another `command` module's `main`) in a subprocess in `root`;
    `prelude` is Python run first (e.g. to plant a crash), `env` is added to the stage environment."""
    code = f"{prelude}\nimport sys\nfrom {command} import main\nsys.exit(main({list(argv)!r}))\n"
    return subprocess.run([sys.executable, "-c", code], cwd=root, env={**stage_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def clean_env(tmp: Path) -> dict[str, str]:
    """The environment of git and DVC in a test project: this interpreter's tools, no user MLflow/git settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GIT_", "SCLORA_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="test",
               GIT_COMMITTER_EMAIL="t@example.com", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")  # fmt: skip
    return env


def prefect_artifact(key: str):
    """The newest Prefect artifact named `key` on the current (test) Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC
        )
    assert found, f"no artifact {key}"
    return found[0]
