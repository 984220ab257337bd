"""A flow run's results, shared with the team through the DVC remote and the git remote.

On a work pool every flow run works in its own checkout (infra/prefect.yaml: git clone at a
ref, then `dvc pull`). When its stages are done, `push_results` sends the stage outputs to
the DVC remote (`dvc push`, with the run cache) and saves the workspace as a DVC experiment
pushed to the git remote (`dvc exp save`, `dvc exp push`): teammates see it in
`dvc exp show -A` after `dvc exp pull`, and another flow run can start from its commit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from flows.stages import run_logged, stage_env

GIT_REMOTE = "origin"  # where the flow run's checkout was cloned from
COMMIT_ENV = "SCLORA_GIT_COMMIT"  # infra/prefect.yaml's pull steps check out this commit when it is set


def start_at(commit: str) -> dict[str, dict[str, str]]:
    """Job variables that start a run of an infra/prefect.yaml deployment at `commit` instead of its branch."""
    return {"env": {COMMIT_ENV: commit}}


def experiment_commit(workdir: str | Path, name: str) -> str:
    """The commit of the DVC experiment `name` in the repository at `workdir`."""
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"],
        cwd=workdir, capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    # DVC keeps experiment `name` at refs/exps/<baseline commit split 2/38>/<name>.
    found = [line.split()[0] for line in refs if line.endswith(f"/{name}")]
    if len(found) != 1:
        raise LookupError(f"{workdir}: {len(found)} experiments named {name} (expected one)")
    return found[0]


def uncached_outputs(workdir: str | Path, stages: list[str] | None = None) -> list[str]:
    """The existing `cache: false` outputs (metrics, small files) of `stages` (default: all), as paths.

    DVC expects git to carry them; an experiment commit must include them even where .gitignore
    hides them, or a checkout of it lacks them and DVC reruns their stage.
    """
    from dvc.repo import Repo

    with Repo(str(workdir)) as repo:
        chosen = [s for target in stages for s in repo.stage.collect(target)] if stages else repo.index.stages
        outs = (out for stage in chosen for out in stage.outs if not out.use_cache and out.exists)
        return sorted({os.path.relpath(out.fs_path, repo.root_dir) for out in outs})


@task(task_run_name="push {name}", retries=2, retry_delay_seconds=10, cache_policy=NONE)
def push_results(
    workdir: str, name: str, stages: list[str] | None = None, git_remote: str = GIT_REMOTE
) -> dict[str, str]:
    """Push the workspace's outputs and save it as experiment `name` on `git_remote`; returns its commit.

    `stages` limits what the experiment commits to the outputs of those stages (the others may not
    exist yet, when only part of the pipeline ran); by default every stage's.
    """
    root, logger, env = Path(workdir), get_run_logger(), stage_env()
    dvc = [sys.executable, "-m", "dvc"]
    run_logged([*dvc, "push", "--run-cache"], root, env, logger, "dvc push")
    save = [*dvc, "exp", "save", "--force", "--name", name, *(stages or [])]
    save += [arg for path in uncached_outputs(root, stages) for arg in ("--include-untracked", path)]
    run_logged(save, root, env, logger, f"dvc exp save {name}")
    run_logged([*dvc, "exp", "push", git_remote, name], root, env, logger, f"dvc exp push {name}")
    commit = experiment_commit(root, name)
    logger.info("experiment %s (commit %s) pushed to %s and the DVC remote", name, commit, git_remote)
    return {"experiment": name, "commit": commit}
