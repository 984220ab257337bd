"""infra/prefect.yaml and the work pools against a real Prefect server on loopback (SQLite).

A git + DVC copy of the repository with tiny params is the team's repository (a bare clone is its
git remote, a folder its DVC remote). Both work pools are created with the server's CLI, the
Kubernetes one from infra/kubernetes/gpu-job-template.json, and every deployment in
infra/prefect.yaml is deployed. The GPU pool's template renders the deployment's `gpu_limit` as
the container's `nvidia.com/gpu` limit. A process worker then runs a sweep: the sweep's own run
computes the capture once and pushes it, and its grid point runs sclora-pipeline/local in its own
checkout, pulls the capture through the DVC remote and pushes its experiment.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from infra_servers import ADMIN, BIN, base_env, log_tail, mlflow_auth_server, prefect_server, process, servers
from prefect.client.orchestration import PrefectClient, SyncPrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, LogFilter, LogFilterFlowRunId
from prefect.workers.base import BaseJobConfiguration
from stage_project import copy_repo, tiny_params

pytestmark = pytest.mark.services  # a Prefect server, an MLflow server, git and DVC remotes
REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "infra" / "kubernetes" / "gpu-job-template.json"
DEPLOYMENTS = {"sclora-pipeline/gpu", "sclora-pipeline/local", "sclora-sweep/gpu", "sclora-sweep/local",
               "sclora-retrain/weekly"}  # fmt: skip


def sh(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> dict:
    """The Prefect server, the team's git and DVC remotes, both pools, and infra/prefect.yaml deployed."""
    tmp = tmp_path_factory.mktemp("team")
    work, remote, store = tmp / "work", tmp / "remote.git", tmp / "dvc-remote"
    work.mkdir()
    copy_repo(work)
    params = tiny_params(tmp)
    params["train"].update(methods=[], max_steps=1)  # SC-LoRA alone: one training run per point
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    env = base_env()
    sh(["git", "init", "-q", "-b", "main"], work, env)
    sh([str(BIN / "dvc"), "init", "-q"], work, env)
    sh([str(BIN / "dvc"), "remote", "add", "-d", "team", str(store)], work, env)  # committed in .dvc/config
    sh(["git", "add", "-A"], work, env)
    sh(["git", "commit", "-q", "-m", "the team's repository"], work, env)
    sh(["git", "clone", "-q", "--bare", str(work), str(remote)], tmp, env)
    with servers(prefect_server(tmp / "prefect"), mlflow_auth_server(tmp / "mlflow")) as (api, mlflow_url):
        # The process worker's environment is its runs': the team's Prefect and MLflow servers, with credentials.
        env = base_env(PREFECT_API_URL=api, SCLORA_GIT_URL=str(remote), SCLORA_GIT_BRANCH="main",
                       MLFLOW_TRACKING_URI=mlflow_url, MLFLOW_TRACKING_USERNAME=ADMIN[0],
                       MLFLOW_TRACKING_PASSWORD=ADMIN[1])  # fmt: skip
        prefect = [str(BIN / "prefect"), "--no-prompt"]
        sh([*prefect, "work-pool", "create", "gpu", "--type", "kubernetes", "--base-job-template", str(TEMPLATE)],
           work, env)  # fmt: skip
        sh([*prefect, "work-pool", "create", "local", "--type", "process"], work, env)
        sh([*prefect, "deploy", "--prefect-file", "infra/prefect.yaml", "--all"], work, env)
        yield {"api": api, "mlflow": mlflow_url, "tmp": tmp, "env": env, "remote": remote, "store": store}


def client(api: str) -> SyncPrefectClient:
    return SyncPrefectClient(api)


class KubernetesJob(BaseJobConfiguration):
    """The fields of prefect-kubernetes' job configuration that the template fills (that package is the
    worker's, not installed here); the rendering itself is Prefect's own `from_template_and_values`."""

    namespace: str
    job_manifest: dict


def rendered_job(api: str, deployment_name: str, run_variables: dict | None = None) -> dict:
    """The Kubernetes Job the `gpu` pool's worker would submit for a run of `deployment_name`."""

    async def render() -> dict:
        async with PrefectClient(api) as c:
            deployment = await c.read_deployment_by_name(deployment_name)
            pool = await c.read_work_pool(deployment.work_pool_name)
            variables = {**deployment.job_variables, **(run_variables or {})}  # as the worker merges them
            config = await KubernetesJob.from_template_and_values(pool.base_job_template, variables, client=c)
        return config.job_manifest

    return asyncio.run(render())


def test_every_deployment_is_on_the_server_with_its_pool_and_schedule(team):
    with client(team["api"]) as c:
        deployments = {f"{c.read_flow(d.flow_id).name}/{d.name}": d for d in c.read_deployments()}
        pools = {pool.name: pool.type for pool in c.read_work_pools()}
    assert set(deployments) == DEPLOYMENTS
    assert pools == {"gpu": "kubernetes", "local": "process"}
    assert {name: d.work_pool_name for name, d in deployments.items()} == {
        "sclora-pipeline/gpu": "gpu", "sclora-pipeline/local": "local", "sclora-sweep/gpu": "gpu",
        "sclora-sweep/local": "local", "sclora-retrain/weekly": "gpu"}  # fmt: skip
    weekly = deployments["sclora-retrain/weekly"]
    assert [s.schedule.cron for s in weekly.schedules] == ["0 3 * * 1"]
    assert weekly.parameters == {"data_version": "main", "push": True}
    pipeline = deployments["sclora-pipeline/gpu"]
    assert pipeline.parameters == {"push": True}
    # Pull steps: clone the branch named when deploying, move to SCLORA_GIT_COMMIT when a run sets it, dvc pull.
    clone, _, checkout, pull = (next(iter(step.values())) for step in pipeline.pull_steps)
    assert (clone["repository"], clone["branch"]) == (str(team["remote"]), "main")
    assert "$SCLORA_GIT_COMMIT" in checkout["script"]
    assert pull["script"] == "dvc pull --allow-missing"


def test_the_gpu_pool_renders_gpu_limit_as_the_containers_gpu_request(team):
    job = rendered_job(team["api"], "sclora-pipeline/gpu")
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}  # no CPU/memory limit unless asked
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["image"] == "sclora:0.1.0-cuda"
    assert container["envFrom"] == [{"secretRef": {"name": "sclora-credentials", "optional": True}}]
    assert set(container["env"]) == {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "HF_HUB_OFFLINE"}  # the pool's
    # A run's job variables choose the GPU count; 0 asks for none.
    more = rendered_job(team["api"], "sclora-pipeline/gpu", {"gpu_limit": 4, "memory_limit": "64Gi"})
    assert more["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": 4, "memory": "64Gi"}  # fmt: skip


def run_logs(api: str, flow_run_id) -> str:
    with client(api) as c:
        logs = c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
        while len(logs) % 200 == 0 and logs:
            more = c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200,
                               offset=len(logs))  # fmt: skip
            if not more:
                break
            logs += more
    return "\n".join(log.message for log in logs)


@pytest.mark.slow
def test_a_sweep_on_the_process_pool_shares_the_capture_through_the_dvc_remote(team, monkeypatch):
    api, tmp, env = team["api"], team["tmp"], team["env"]
    worker_log, worker_dir = tmp / "worker.log", tmp / "worker"
    worker_dir.mkdir()
    command = [str(BIN / "prefect"), "worker", "start", "--pool", "local", "--type", "process"]
    with process(command, worker_log, env, cwd=worker_dir), client(api) as c:
        sweep_deployment = c.read_deployment_by_name("sclora-sweep/local")
        # One grid point (test_flows runs several, and their failures, on a small DAG): what is shared is the test.
        sweep = c.create_flow_run_from_deployment(sweep_deployment.id, parameters={"grid": {"train.max_steps": [2]}})
        deadline = time.monotonic() + 900
        while not (state := c.read_flow_run(sweep.id).state).is_final() and time.monotonic() < deadline:
            time.sleep(3)
        pipeline = c.read_deployment_by_name("sclora-pipeline/local")
        points = c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[pipeline.id])))
    sweep_logs = run_logs(api, sweep.id)
    assert state.is_completed(), f"sweep {state.name}: {state.message}\n{sweep_logs[-3000:]}\n{log_tail(worker_log)}"

    # The sweep's own checkout ran the capture (and what it needs) once and pushed it as an experiment ...
    assert "Running stage 'capture'" in sweep_logs
    names = sorted(run.name for run in points)
    stamp = names[0].removesuffix("-0")
    assert names == [f"{stamp}-0"] and all(run.state.is_completed() for run in points)
    # ... and the point, in its own checkout of that experiment, pulled it instead of running it.
    for run in points:
        logs = run_logs(api, run.id)
        for shared in ("capture", "evaluate_base"):
            assert f"Stage '{shared}' didn't change, skipping" in logs, (run.name, shared)
            assert f"Running stage '{shared}'" not in logs, (run.name, shared)
        assert "Running stage 'train_sclora@benign-sclora-0.8-0'" in logs, run.name

    # Every experiment is on the git remote, its outputs on the DVC remote: a teammate's clone gets them.
    refs = sh(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"], team["remote"], env)
    commits = {ref.rsplit("/", 1)[1]: sha for sha, ref in (line.split() for line in refs.splitlines())}
    assert set(commits) == {f"{stamp}-base", f"{stamp}-0"}
    teammate = tmp / "teammate"
    sh(["git", "clone", "-q", str(team["remote"]), str(teammate)], tmp, env)
    sh(["git", "fetch", "-q", "origin", commits[f"{stamp}-0"]], teammate, env)
    sh(["git", "checkout", "-q", "--detach", "FETCH_HEAD"], teammate, env)
    sh([str(BIN / "dvc"), "pull", "-q"], teammate, env)
    assert yaml.safe_load((teammate / "params.yaml").read_text())["train"]["max_steps"] == 2
    assert (teammate / "artifacts" / "runs" / "benign-sclora-0.8-0" / "export" / "adapter_config.json").is_file()
    run = json.loads((teammate / "artifacts" / "runs" / "benign-sclora-0.8-0" / "run.json").read_text())  # from git
    assert run["global_step"] == 2
    assert (teammate / "artifacts" / "capture" / "neg" / "manifest.parquet").is_file()

    # The point logged to the team's MLflow server with the worker's credentials, with its own steps.
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    client_ = mlflow.MlflowClient(tracking_uri=team["mlflow"])
    experiment = client_.get_experiment_by_name("sclora")
    trained = client_.search_runs([experiment.experiment_id], filter_string="tags.method = 'sclora'")
    steps = sorted(len(client_.get_metric_history(run.info.run_id, "train_loss")) for run in trained)
    assert steps == [2]  # the point's train.max_steps (the params say 1)
