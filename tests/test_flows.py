"""The Prefect flows run for real under `prefect_test_harness`, against real DVC projects.

They use a small DVC project whose stages are one short script (fast, and able to fail on
request); the flows on the repository's own dvc.yaml are in test_pipeline_dvc.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import flows  # noqa: F401 - Prefect's local settings before Prefect is imported

# isort: split
from stage_project import clean_env, prefect_artifact

from flows.pipeline import pipeline
from flows.stages import StageFailed, run_logged, run_stages, stage_order
from flows.sweep import grid_points, queue_commands, sweep
from sclora.ops.tracking import PARENT_ENV

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_harness")]  # Prefect's test server
REPO = Path(__file__).resolve().parent.parent
PNG = bytes.fromhex(  # a 1x1 PNG: the report stage's plot
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)

# Each stage appends "<stage> <parent run id>" to order.log; SCLORA_TEST_FAIL=<stage> fails it,
# SCLORA_TEST_FAIL_ONCE=<stage> fails its first attempt only. The stages named in SCLORA_TEST_MEET each
# wait (60 s at most) until all of them have started: they pass only if they run at the same time.
STEP = f'''
import os, sys, time
from pathlib import Path
stage = sys.argv[1]
print(f"{{stage}}: starting")
meet = [name for name in os.environ.get("SCLORA_TEST_MEET", "").split(",") if name]
if stage in meet:
    Path(f"started-{{stage}}").touch()
    deadline = time.monotonic() + 60
    while not all(Path(f"started-{{name}}").exists() for name in meet):
        if time.monotonic() > deadline:
            print(f"error: {{stage}}: ran alone", file=sys.stderr)
            sys.exit(1)
        time.sleep(0.1)
once = Path(f"failed-once-{{stage}}")
if os.environ.get("SCLORA_TEST_FAIL") == stage or (os.environ.get("SCLORA_TEST_FAIL_ONCE") == stage
                                                    and not once.exists()):
    once.touch()
    print(f"error: {{stage}}: told to fail", file=sys.stderr)
    sys.exit(1)
with open("order.log", "a") as log:
    log.write(f"{{stage}} {{os.environ.get('{PARENT_ENV}', '')}}\\n")
out = Path("out"); out.mkdir(exist_ok=True)
if stage == "report":
    report = Path("artifacts/report"); report.mkdir(parents=True, exist_ok=True)
    (report / "results.csv").write_text("run,utility\\nbenign-lora-0,0.5\\nbenign-sclora-0.8-0,0.75\\n")
    (report / "pareto.png").write_bytes(bytes.fromhex("{PNG.hex()}"))
else:
    (out / f"{{stage}}.txt").write_text(stage)
print(f"{{stage}}: done")
'''

DVC_YAML = {
    "stages": {
        "make": {"cmd": "python step.py make", "deps": ["step.py"], "params": ["train.max_steps"],
                 "outs": ["out/make.txt"]},
        "square": {"matrix": {"n": [1, 2]}, "cmd": "python step.py square-${item.n}",
                   "deps": ["step.py", "out/make.txt"], "outs": ["out/square-${item.n}.txt"]},
        "report": {"cmd": "python step.py report", "deps": ["out/square-1.txt", "out/square-2.txt"],
                   "outs": [{"artifacts/report": {"cache": False}}]},
    }
}  # fmt: skip
ORDER = ["make", "square@1", "square@2", "report"]


def sh(command: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A fresh git + DVC project with the small DAG above and the repository's params (store under tmp)."""
    work = tmp_path / "project"
    work.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    (work / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False), encoding="utf-8")
    (work / "step.py").write_text(STEP, encoding="utf-8")
    (work / ".gitignore").write_text("order.log\nfailed-once-*\nstarted-*\n", encoding="utf-8")
    env = clean_env(tmp_path)
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "SCLORA_"))]:
        monkeypatch.delenv(key)
    sh(["git", "init", "-q"], work, env)
    sh([sys.executable, "-m", "dvc", "init", "-q"], work, env)
    sh(["git", "add", "-A"], work, env)
    sh(["git", "commit", "-q", "-m", "project"], work, env)
    return work


def test_stage_order_comes_from_dvc(project):
    assert stage_order(project) == ORDER


def test_run_logged_streams_every_line_and_names_the_failure(tmp_path):
    class Lines(list):
        def info(self, line):
            self.append(line)

    lines = Lines()
    script = "import sys; print('one'); print('two', file=sys.stderr); print('error: x: bad'); sys.exit(3)"
    with pytest.raises(StageFailed, match=r"^stage x failed \(exit 3\): error: x: bad$"):
        run_logged([sys.executable, "-c", script], tmp_path, dict(os.environ), lines, "stage x")
    assert sorted(lines) == ["error: x: bad", "one", "two"]


def test_pipeline_runs_every_stage_once_in_dag_order_and_publishes_the_report(project):
    result = pipeline(workdir=str(project), overrides=("train.max_steps=7",), retry_delay_seconds=0)
    assert result["stages"] == ORDER
    logged = [line.split() for line in (project / "order.log").read_text().splitlines()]
    assert [stage for stage, _ in logged] == ["make", "square-1", "square-2", "report"]
    assert {parent for _, parent in logged} == {result["parent_run_id"]}  # the flow's MLflow run reached the stages
    # The override is in params.yaml, and DVC sees every stage up to date with it.
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["max_steps"] == 7
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=project, capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert json.loads(status.stdout) == {}
    table = prefect_artifact("sclora-results")
    assert table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [row["run"] for row in rows] == ["benign-lora-0", "benign-sclora-0.8-0"]
    plots = prefect_artifact("sclora-plots")
    assert "## pareto" in plots.data and "data:image/png;base64," in plots.data
    import mlflow

    parent = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project.parent / 'mlflow.db'}").get_run(
        result["parent_run_id"]
    )
    assert parent.info.status == "FINISHED"

    # A second run finds everything up to date: DVC, not the flow, decides what runs.
    pipeline(workdir=str(project), retry_delay_seconds=0)
    assert len((project / "order.log").read_text().splitlines()) == 4


def test_a_stage_that_fails_once_is_retried(project, monkeypatch):
    monkeypatch.setenv("SCLORA_TEST_FAIL_ONCE", "square-2")
    result = pipeline(workdir=str(project), retries=1, retry_delay_seconds=0)
    assert (project / "failed-once-square-2").exists()
    assert [line.split()[0] for line in (project / "order.log").read_text().splitlines()] == [
        "make", "square-1", "square-2", "report"]  # fmt: skip
    assert result["stages"] == ORDER


def test_a_stage_that_always_fails_fails_the_flow_with_its_error(project, monkeypatch):
    monkeypatch.setenv("SCLORA_TEST_FAIL", "square-1")
    with pytest.raises(StageFailed, match=r"^stage square@1 failed \(exit \d+\): error: square-1: told to fail$"):
        pipeline(workdir=str(project), retries=1, retry_delay_seconds=0)
    assert [line.split()[0] for line in (project / "order.log").read_text().splitlines()] == ["make"]
    assert not (project / "artifacts" / "report").exists()


def test_with_jobs_independent_stages_run_side_by_side(project, monkeypatch):
    monkeypatch.setenv("SCLORA_TEST_MEET", "square-1,square-2")
    result = pipeline(workdir=str(project), jobs=2, retries=0)
    assert result["stages"] == ORDER
    logged = [line.split()[0] for line in (project / "order.log").read_text().splitlines()]
    assert logged[0] == "make" and sorted(logged[1:3]) == ["square-1", "square-2"] and logged[3:] == ["report"]
    # Both items wrote their dvc.lock entries although they finished at about the same time.
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=project, capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert json.loads(status.stdout) == {}


class _Finished:
    """A stage future that is already done: `prefect.futures.as_completed` yields it at once."""

    _final_state = True

    def result(self):
        return None


def test_a_stage_alone_gets_every_core_and_stages_side_by_side_share_them(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    given: dict[str, int] = {}

    class Recorder:
        def submit(self, stage, threads):
            given[stage] = threads
            return _Finished()

    plan = {"testbed": [], "a": ["testbed"], "b": ["testbed"], "c": ["testbed"], "report": ["a", "b", "c"]}
    run_stages(plan, Recorder(), 2)
    # c starts while one of a, b still counts as running: two stages share the cores; report runs alone.
    assert given == {"testbed": 4, "a": 2, "b": 2, "c": 2, "report": 4}
    given.clear()
    run_stages(plan, Recorder(), 1)  # one at a time: each stage has every core
    assert set(given.values()) == {4}


def test_with_jobs_a_failure_lets_running_stages_finish_and_starts_nothing_new(project, monkeypatch):
    monkeypatch.setenv("SCLORA_TEST_FAIL", "square-1")
    with pytest.raises(StageFailed, match=r"^stage square@1 failed"):
        pipeline(workdir=str(project), jobs=2, retries=0)
    # square-2 started beside square-1 and finished; report, which needs both, never started.
    assert [line.split()[0] for line in (project / "order.log").read_text().splitlines()] == ["make", "square-2"]
    assert not (project / "artifacts" / "report").exists()


def test_bad_override_fails_before_anything_runs(project):
    before = (project / "params.yaml").read_text()
    with pytest.raises(ValueError, match="train.max_steps"):
        pipeline(workdir=str(project), overrides=("train.max_steps=-3",))
    assert (project / "params.yaml").read_text() == before
    assert not (project / "order.log").exists()


def test_grid_points_and_queue_commands():
    points = grid_points({"train.lr": [1e-4, 2e-4], "solve.betas": [[0.5], [0.8, 0.9]]})
    assert points == [
        ["train.lr=0.0001", "solve.betas=[0.5]"], ["train.lr=0.0001", "solve.betas=[0.8, 0.9]"],
        ["train.lr=0.0002", "solve.betas=[0.5]"], ["train.lr=0.0002", "solve.betas=[0.8, 0.9]"],
    ]  # fmt: skip
    commands = queue_commands(points[:2], ["a", "b"], jobs=2)
    dvc = [sys.executable, "-m", "dvc"]
    assert commands == [
        [*dvc, "exp", "run", "--queue", "--name", "a", "-S", "train.lr=0.0001", "-S", "solve.betas=[0.5]"],
        [*dvc, "exp", "run", "--queue", "--name", "b", "-S", "train.lr=0.0001", "-S", "solve.betas=[0.8, 0.9]"],
        [*dvc, "exp", "run", "--run-all", "--jobs", "2"],
    ]
    with pytest.raises(ValueError, match="sweep grid train.lr"):
        grid_points({"train.lr": []})


def test_sweep_runs_each_point_as_a_dvc_experiment_and_reports_failures(project, monkeypatch):
    # make (which depends on train.max_steps) fails when max_steps is 5.
    step = project / "step.py"
    step.write_text(step.read_text().replace(
        'print(f"{stage}: starting")',
        'print(f"{stage}: starting")\nimport yaml\n'
        'if stage == "make" and yaml.safe_load(open("params.yaml"))["train"]["max_steps"] == 5:\n'
        '    sys.exit("error: make: max_steps 5 is bad")',
    ))  # fmt: skip
    env = clean_env(project.parent)
    sh(["git", "add", "step.py"], project, env)
    sh(["git", "commit", "-q", "-m", "step reads params"], project, env)
    result = sweep(grid={"train.max_steps": [4, 5]}, workdir=str(project))
    statuses = {tuple(o["overrides"]): o["status"] for o in result["points"].values()}
    assert statuses == {("train.max_steps=4",): "Success", ("train.max_steps=5",): "Failed"}
    assert len(result["failed"]) == 1
    listed = sh([sys.executable, "-m", "dvc", "exp", "list", "--name-only"], project, env).split()
    succeeded = next(name for name, o in result["points"].items() if o["status"] == "Success")
    assert listed == [succeeded]  # the experiment DVC kept, for `dvc exp show` / `dvc exp apply`


REGISTER = """
import json, os
from pathlib import Path
import yaml
from sclora.ops import registry, tracking
uri = yaml.safe_load(open("params.yaml"))["tracking"]["uri"]
with tracking.child_run("t", "lora", None, 0, parent_run_id=os.environ["SCLORA_PARENT_RUN_ID"], uri=uri) as run:
    pass
adapter = Path("out/adapter"); adapter.mkdir(parents=True, exist_ok=True)
(adapter / "adapter_config.json").write_text('{"init_lora_weights": true}')
utility = float(Path("data/d.txt").read_text())  # the data version decides how good the candidate is
version = registry.register_adapter(adapter, "m", {"utility": utility, "forgetting": {"knowledge": 0.0,
                                    "attack_success_rate": 0.0}}, run_id=run.info.run_id)
Path("artifacts").mkdir(exist_ok=True)
Path("artifacts/registry.json").write_text(json.dumps({"model": "m", "candidate": "t-lora-0",
                                                       "candidate_version": version}))
"""


@pytest.fixture
def retrain_project(project) -> Path:
    """The small project, its data imported from a data registry (tags v1, v2), and a register stage."""
    env = clean_env(project.parent)
    dvc = [sys.executable, "-m", "dvc"]
    registry = project.parent / "registry"
    (registry / "data").mkdir(parents=True)
    sh(["git", "init", "-q"], registry, env)
    sh([*dvc, "init", "-q"], registry, env)
    sh([*dvc, "remote", "add", "-d", "store", str(project.parent / "remote")], registry, env)
    for tag, utility in (("v1", "0.9"), ("v2", "0.1")):
        (registry / "data" / "d.txt").write_text(utility)
        sh([*dvc, "add", "-q", "data/d.txt"], registry, env)
        sh(["git", "add", "-A"], registry, env)
        sh(["git", "commit", "-q", "-m", tag], registry, env)
        sh(["git", "tag", tag], registry, env)
        sh([*dvc, "push", "-q"], registry, env)
    (project / "data").mkdir()
    sh([*dvc, "import", "-q", str(registry), "data/d.txt", "-o", "data/d.txt", "--rev", "v1"], project, env)
    (project / "register.py").write_text(REGISTER, encoding="utf-8")
    stages = yaml.safe_load((project / "dvc.yaml").read_text())
    stages["stages"]["make"]["deps"].append("data/d.txt")
    stages["stages"]["register"] = {"cmd": "python register.py", "deps": ["register.py", "data/d.txt"],
                                    "outs": [{"artifacts/registry.json": {"cache": False}}]}  # fmt: skip
    (project / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False), encoding="utf-8")
    sh(["git", "add", "-A"], project, env)
    sh(["git", "commit", "-q", "-m", "imported data"], project, env)
    return project


def test_retrain_moves_champion_only_when_the_gates_pass(retrain_project):
    from flows.retrain import data_imports, retrain

    assert data_imports(retrain_project) == ["data/d.txt.dvc"]
    first = retrain("v1", workdir=str(retrain_project), retry_delay_seconds=0)
    assert first["promoted"] and first["reasons"][0] == "no champion yet"
    worse = retrain("v2", workdir=str(retrain_project), retry_delay_seconds=0)
    assert (retrain_project / "data" / "d.txt").read_text() == "0.1"  # the import moved to v2
    assert not worse["promoted"]
    assert worse["reasons"] == ["utility 0.1000 vs champion 0.9000 - 0.02"]  # only the failed gate
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{retrain_project.parent / 'mlflow.db'}",
                                 registry_uri=f"sqlite:///{retrain_project.parent / 'mlflow.db'}")  # fmt: skip
    assert str(client.get_model_version_by_alias("m", "champion").version) == first["version"] != worse["version"]


def test_retrain_with_select_in_retrain_promotes_what_select_beta_registered(retrain_project, monkeypatch):
    import flows.retrain

    params = yaml.safe_load((retrain_project / "params.yaml").read_text())
    params["select"]["in_retrain"] = True
    (retrain_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    calls = []

    def select_beta(params_file, workdir, retries):  # the pipeline's register stage stands in for the search
        calls.append(workdir)
        result = pipeline(params_file=params_file, workdir=workdir, retry_delay_seconds=0)
        registry = json.loads((Path(workdir) / "artifacts/registry.json").read_text())
        return {"parent_run_id": result["parent_run_id"], "model": registry["model"], "candidate": "t-sclora-0.4-0",
                "version": registry["candidate_version"], "message": "beta 0.4"}  # fmt: skip

    monkeypatch.setattr(flows.retrain, "select_beta", select_beta)
    decision = flows.retrain.retrain("v1", workdir=str(retrain_project), retry_delay_seconds=0)
    assert calls == [str(retrain_project)]
    assert decision["candidate"] == "t-sclora-0.4-0" and decision["promoted"]


def test_sclora_run_then_report_on_the_command_line(project, capsys):
    from flows.cli import main

    assert main(["run", "--workdir", str(project), "-S", "train.max_steps=9"]) == 0
    out = capsys.readouterr().out
    assert f"report: {project / 'artifacts' / 'report' / 'report.md'}" in out
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in out and "prefect server start" in out
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["max_steps"] == 9
    assert main(["report", "--workdir", str(project)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run,utility\nbenign-lora-0,0.5\n")
    assert len((project / "order.log").read_text().splitlines()) == 4  # `report` was up to date: nothing reran
