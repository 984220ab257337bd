"""Running DVC's stages: each as a Prefect task, by DVC's own graph, in a workspace whose params.yaml is set first.

DVC owns the DAG and "is this stage up to date": the order comes from DVC's graph
(`dvc.repo.reproduce.plan_repro`, what `dvc repro` itself follows) and each task runs
`dvc repro --single-item <stage>`, which skips a stage whose deps, params and outs are
unchanged. With `jobs` > 1, stages whose upstream stages are done run side by side, as DVC
documents for parallel stage execution: `dvc repro` releases the repository lock while a
stage's command runs, and `--wait-for-lock` makes each `dvc repro` wait its turn for the lock
(to hash and commit) instead of failing.

Params: the stages read `params.yaml` in the workspace, so `params_file` (when it is
another file) is copied onto it and `-S` overrides are written into it with DVC's own
override code (`dvc exp run -S` semantics), after validating the result. DVC then sees
the changed params and reruns exactly the stages that depend on them.

Not named dvc.py: Prefect loads a deployment's entrypoint with flows/ first on sys.path, where that name would
hide the dvc package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.futures import as_completed

import flows  # noqa: F401 - Prefect's local settings, before Prefect is imported
from sclora.ops import tracking
from sclora.ops.config import Params, load_params

PARAMS_FILE = "params.yaml"  # what dvc.yaml's stages read


class StageFailed(RuntimeError):
    """A DVC stage that exited non-zero; the message names the stage and its last error line."""


def stage_plan(workdir: str | Path = ".") -> dict[str, list[str]]:
    """Every pipeline stage item of the DVC project in `workdir`, in the order `dvc repro` runs them,
    each with the stage items it depends on."""
    from dvc.repo import Repo
    from dvc.repo.reproduce import get_active_graph, plan_repro

    with Repo(str(workdir)) as repo:
        graph = get_active_graph(repo.index.graph)
        names = {}
        for stage in plan_repro(graph):
            if not getattr(stage, "cmd", None):
                continue  # `.dvc` files (added or imported data): nothing to run
            # Addressed from the project root (`Stage.addressing` is relative to this process's cwd).
            file = os.path.relpath(stage.path, repo.root_dir)
            names[stage] = stage.name if file == "dvc.yaml" else f"{file}:{stage.name}"
        # DVC's graph has an edge from each stage to every stage whose outputs it reads.
        return {name: [names[up] for up in graph.successors(stage) if up in names] for stage, name in names.items()}


def stage_order(workdir: str | Path = ".") -> list[str]:
    """Every pipeline stage item of the DVC project in `workdir`, in the order `dvc repro` runs them."""
    return list(stage_plan(workdir))


def stage_threads(jobs: int, busy: int) -> int:
    """CPU threads for a stage started while `busy` stages (it among them) run or are ready to: the cores shared
    by at most `jobs` of them. A stage with nothing beside it, as the testbed build, gets every core."""
    return max(1, (os.cpu_count() or 1) // max(1, min(jobs, busy)))


def stage_env(parent_run_id: str | None = None, threads: int | None = None) -> dict[str, str]:
    """The environment of a stage process: this Python's `python`/`dvc` first, unbuffered output, and
    OMP_NUM_THREADS=`threads` unless the environment sets it."""
    env = dict(os.environ)
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"  # stream the stage's lines as they come, not at exit
    env.setdefault("DVC_NO_ANALYTICS", "1")
    # Every progress-bar refresh is a log line here (universal newlines split on '\r'): refresh rarely.
    env.setdefault("TQDM_MININTERVAL", "10")
    if parent_run_id:
        env[tracking.PARENT_ENV] = parent_run_id
    return env


def run_logged(command: list[str], cwd: Path, env: dict[str, str], logger, what: str) -> None:
    """Run `command`, sending each output line to `logger`; raise StageFailed naming `what` on failure."""
    tail: deque[str] = deque(maxlen=50)
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        for line in process.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                logger.info(line)
        code = process.wait()
    if code != 0:
        errors = [line for line in tail if "error" in line.lower()]
        # The first error line is the stage's own (`error: <stage>: ...`); DVC's summary follows it.
        reason = errors[0] if errors else (tail[-1] if tail else "no output")
        raise StageFailed(f"{what} failed (exit {code}): {reason}")


@task(task_run_name="{stage}", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def run_stage(stage: str, workdir: str, parent_run_id: str | None = None, threads: int | None = None) -> str:
    """`dvc repro --single-item <stage>`, its output streamed into the Prefect log; returns the stage name."""
    command = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage]
    run_logged(command, Path(workdir), stage_env(parent_run_id, threads), get_run_logger(), f"stage {stage}")
    return stage


def run_stages(plan: dict[str, list[str]], stage_task, jobs: int, *args) -> None:
    """Run every stage of `plan` by `stage_task.submit(stage, *args, threads)`, at most `jobs` at a time, each once
    the stages it depends on have succeeded, in plan order among those ready, with `stage_threads` threads. After a
    failure nothing new starts (as in `dvc repro`); the running stages finish, then the first failure is raised.

    Not Prefect's `submit(wait_for=...)` on a bounded task runner: it holds back only the stages downstream of a
    failure, so queued independent stages would still start; and a stage's threads depend on what runs beside it
    when it starts, which stages submitted all at once cannot know."""
    waiting = dict(plan)
    running: dict = {}  # future -> stage
    done: set[str] = set()
    failure: BaseException | None = None
    while running or (waiting and failure is None):
        ready = [stage for stage, upstream in waiting.items() if done.issuperset(upstream)]
        for stage in ready:
            if failure is not None or len(running) >= jobs:
                break
            del waiting[stage]
            threads = stage_threads(jobs, len(running) + len(ready) - ready.index(stage))
            running[stage_task.submit(stage, *args, threads)] = stage
        if not running:
            raise StageFailed(f"stages {', '.join(waiting)} wait on stages that are not in the plan")
        finished = next(as_completed(list(running)))
        stage = running.pop(finished)
        try:
            finished.result()
            done.add(stage)
        except Exception as error:  # noqa: BLE001 - kept, and raised once the running stages have finished
            failure = failure or error
    if failure is not None:
        raise failure


def prepare_params(workdir: Path, params_file: str | Path = PARAMS_FILE, overrides: tuple[str, ...] = ()) -> Params:
    """Validate `params_file` with `overrides`, then make the workspace's params.yaml say the same.

    Nothing is written when validation fails (ParamsError, one line).
    """
    source = Path(params_file) if Path(params_file).is_absolute() else workdir / params_file
    params = load_params(source, list(overrides))
    target = workdir / PARAMS_FILE
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    if overrides:
        from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` applies

        apply_overrides(target, list(overrides))
    return params


def store_uri(params: Params, workdir: Path) -> str:
    """The MLflow store the stages will use, with a relative SQLite path made relative to `workdir`."""
    uri = tracking.tracking_uri(params.tracking.uri)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix) :]).is_absolute():
        return prefix + str((workdir / uri[len(prefix) :]).resolve())
    return uri
