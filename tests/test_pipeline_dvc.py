"""The repository's dvc.yaml run for real in a temporary git + DVC copy of the repository, on a tiny grid.

Tiny testbed, one task, two baselines (lora, pissa) and SC-LoRA at one beta, a few steps, MLflow in a
SQLite file under tmp: the session's `tiny_repro` (conftest.py). Checks every stage's outputs, that DVC
sees the workspace as clean, that `dvc metrics show` has every run's metrics, and that a second
`dvc repro` runs nothing. The pipeline and select_beta flows then run on copies of that workspace, under
Prefect's test server. The tests that need `tiny_repro` are in this file and in test_mlflow_ui.py (which
reads a copy of its MLflow store): it is made once per test process that runs either file.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from stage_project import clean_env, prefect_artifact, run, tiny_params

from flows.pipeline import pipeline as pipeline_flow

pytestmark = pytest.mark.slow
RUNS = ("benign-lora-0", "benign-pissa-0", "benign-sclora-0.8-0")


@pytest.fixture(scope="module")
def pipeline(tiny_repro) -> tuple[Path, dict, str]:
    return tiny_repro.work, tiny_repro.env, tiny_repro.output


def test_repro_runs_every_stage_and_writes_its_outputs(pipeline):
    work, _, output = pipeline
    stages = ["testbed", "prepare", "capture", "solve@0.8", "forecast", "plan", "evaluate_base", "train@benign-lora-0",
              "train@benign-pissa-0", "train_sclora@benign-sclora-0.8-0", "register", "report"]  # fmt: skip
    for stage in stages:
        assert f"Running stage '{stage}'" in output, stage
    art = work / "artifacts"
    fingerprints = json.loads((art / "prepared" / "fingerprints.json").read_text())
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert set(fingerprints) == set(params["data"]["sources"])
    for source in fingerprints:
        assert (art / "prepared" / f"{source}.parquet").is_file()
    for capture in ("neg", "pos-benign"):
        assert (art / "capture" / capture / "manifest.parquet").is_file()
    assert (art / "solve" / "beta-0.8" / "benign.safetensors").is_file()
    spectra = json.loads((art / "solve" / "beta-0.8" / "spectra.json").read_text())
    assert all(len(values) == 2 for values in spectra["benign"].values())  # rank 2 per layer
    base = json.loads((art / "eval" / "base" / "metrics.json").read_text())
    for name in RUNS:
        run_dir = art / "runs" / name
        assert (run_dir / "export" / "adapter_config.json").is_file()
        assert (run_dir / "model").is_dir()
        summary = json.loads((run_dir / "run.json").read_text())
        assert summary["run"] == name and summary["global_step"] == 3
        assert len(json.loads((run_dir / "loss_history.json").read_text())) == 3
        metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
        assert set(metrics["forgetting"]) >= {"knowledge", "refusal_rate"}
        assert metrics["forgetting"]["knowledge"] == pytest.approx(base["knowledge"] - metrics["knowledge"])
    # Checkpoints are removed once a run is complete.
    assert not (art / "checkpoints").exists() or not any((art / "checkpoints").iterdir())
    with (art / "report" / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["run"] for row in rows) == sorted(RUNS)
    assert (art / "report" / "report.md").is_file()
    assert list((art / "report").glob("*.png"))


def test_registry_holds_the_candidate_once(pipeline):
    work, env, _ = pipeline
    registry = json.loads((work / "artifacts" / "registry.json").read_text())
    assert registry["candidate"] in registry["within_budget"]
    assert set(registry["within_budget"]) <= set(RUNS)
    assert registry["utility"][registry["candidate"]] == max(registry["utility"].values())
    run(["dvc", "repro", "--force", "--single-item", "register"], work, env)  # registering again adds nothing
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work.parent / 'mlflow.db'}",
                                 registry_uri=f"sqlite:///{work.parent / 'mlflow.db'}")  # fmt: skip
    candidate = client.get_model_version_by_alias(registry["model"], "candidate")
    assert str(candidate.version) == registry["candidate_version"]
    assert candidate.tags["run"] == registry["candidate"]
    child = client.get_run(candidate.run_id)
    assert child.data.tags["method"] in ("lora", "pissa", "sclora")
    assert "mlflow.parentRunId" in child.data.tags
    assert [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")] == [1, 2, 3]
    assert len(client.search_model_versions(f"name = '{registry['model']}'")) == 1


def test_dvc_sees_a_clean_workspace_with_metrics_and_plots(pipeline):
    work, env, _ = pipeline
    status = json.loads(run(["dvc", "status", "--json"], work, env).strip().splitlines()[-1])
    assert status == {}
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], work, env))
    assert len(metrics) == 1  # the workspace only (DVC names it "" or "workspace")
    files = next(iter(metrics.values()))["data"]
    for name in RUNS:
        data = files[f"artifacts/runs/{name}/eval/metrics.json"]["data"]
        assert 0.0 <= data["utility"] <= 1.0
        assert "knowledge" in data["forgetting"]
    assert "artifacts/eval/base/metrics.json" in files
    plots = json.loads(run(["dvc", "plots", "show", "--json"], work, env))
    assert not plots.get("errors"), plots.get("errors")
    assert any(name.endswith(".png") for name in plots["data"])
    assert f"artifacts/runs/{RUNS[0]}/loss_history.json" in plots["data"]


def test_second_repro_runs_nothing(pipeline):
    work, env, _ = pipeline
    output = run(["dvc", "repro"], work, env)
    assert "Running stage" not in output


def flow_workspace(tmp_path: Path, monkeypatch, params: dict, built: Path) -> tuple[Path, dict]:
    """A copy of the workspace `built` (its outputs and dvc.lock) with `params` in tmp_path/tiny.yaml, and its
    environment: only the stages that `params` change run again."""
    work = tmp_path / "repo"
    shutil.copytree(built, work, symlinks=True)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "SCLORA_"))]:
        monkeypatch.delenv(key)
    for name, value in (("OMP_NUM_THREADS", "1"), ("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        monkeypatch.setenv(name, value)
    return work, clean_env(tmp_path)


@pytest.mark.usefixtures("prefect_harness")
def test_pipeline_flow_on_the_real_dvc_yaml_with_tiny_params(tmp_path, monkeypatch, tiny_repro):
    # From the session's `dvc repro` of the same params and MLflow store: the override changes LoRA's run alone.
    repro = tiny_repro.work
    work, env = flow_workspace(tmp_path, monkeypatch, tiny_params(repro.parent), repro)

    # Two stages at a time: concurrent stage processes share DVC's lock, the MLflow store and the HF caches.
    override = "train.learning_rates.lora=2.0e-3"
    result = pipeline_flow(params_file=str(tmp_path / "tiny.yaml"), overrides=(override,), workdir=str(work), jobs=2)
    assert result["stages"] == ["testbed", "prepare", "capture", "solve@0.8", "forecast", "plan", "evaluate_base",
                                "train@benign-lora-0", "train@benign-pissa-0", "train_sclora@benign-sclora-0.8-0",
                                "register", "report"]  # fmt: skip
    with open(result["results"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["run"] for row in rows) == list(RUNS)
    run_json = json.loads((work / "artifacts/runs/benign-lora-0/run.json").read_text())
    assert run_json["lr"] == 2.0e-3  # the -S override reached the stage ...
    for name in RUNS[1:]:  # ... and DVC ran no other training
        assert (work / f"artifacts/runs/{name}/run.json").read_bytes() == (
            repro / f"artifacts/runs/{name}/run.json"
        ).read_bytes()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repro.parent / 'mlflow.db'}")
    child = client.get_run(run_json["mlflow_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == result["parent_run_id"]
    assert json.loads(run(["dvc", "status", "--json"], work, env).strip().splitlines()[-1]) == {}
    table = prefect_artifact("sclora-results")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert len(rows) == 3


@pytest.mark.usefixtures("prefect_harness")
def test_select_beta_on_the_real_dvc_yaml_probes_registers_and_says_when_a_budget_is_unmet(
    tmp_path, monkeypatch, tiny_repro
):
    from flows.cli import main
    from flows.select_beta import select_beta
    from sclora.selection import first_beta
    from tasks.artifacts import load_forecast

    params = tiny_params(tmp_path)
    params["train"]["max_steps"] = 2
    params["data"]["finetune"]["poisoned"] = "finetune_poisoned"  # dropped by every round: probes train select.task
    params["select"].update(task="benign", seeds=[1, 2], confirm_seeds=[3, 4], max_runs=2,
                            forgetting_budget={"knowledge": 1.0})  # fmt: skip
    work, _ = flow_workspace(tmp_path, monkeypatch, params, tiny_repro.work)
    before = {path.name: (path / "run.json").read_bytes() for path in (work / "artifacts" / "runs").iterdir()}

    result = select_beta(params_file=str(tmp_path / "tiny.yaml"), workdir=str(work), jobs=2)
    probed = [probe["beta"] for probe in result["probes"]]
    # knowledge can drop by 1.0 at most: every probe is within the budget, so the search bisects downwards
    assert probed[0] == first_beta(load_forecast(work)["benign"]) and probed[1] == round(probed[0] / 2, 3)
    # ... and the chosen beta is trained again on the two confirmation seeds before it is registered
    assert result["chosen"] in probed and result["version"] == "1" and result["training_runs"] == 6
    assert [probe["seeds"] for probe in result["confirmation"]] == [2] and "confirmed on 2 fresh seeds" in result[
        "message"
    ]
    assert result["stopped"] == "max_runs (2 probes)"
    runs = {path.name: (path / "run.json").read_bytes() for path in (work / "artifacts" / "runs").iterdir()}
    trained = {f"benign-sclora-{b}-{s}" for b in probed for s in (1, 2)}
    trained |= {f"benign-sclora-{result['chosen']}-{s}" for s in (3, 4)}
    assert sorted(set(runs) - set(before)) == sorted(trained) and result["candidate"].endswith(("-3", "-4"))
    assert {name: runs[name] for name in before} == before  # sclora alone, probes only: the repro's runs stand
    assert yaml.safe_load((work / "params.yaml").read_text())["solve"]["betas"] == sorted(probed)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                 registry_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # fmt: skip
    version = client.get_model_version_by_alias("sclora-adapter", "candidate")
    assert str(version.version) == "1" and version.tags["select.beta"] == str(result["chosen"])
    assert json.loads(version.tags["select.budget"]) == {"knowledge": 1.0}
    assert "Beta for a forgetting budget (knowledge <= 1)" in version.description
    assert f"| 1 | {probed[0]:g} |" in version.description  # every probe, in the registry
    child = client.get_run(json.loads((work / f"artifacts/runs/{result['candidate']}/run.json").read_text())
                           ["mlflow_run_id"])  # fmt: skip
    assert child.data.tags["mlflow.parentRunId"] == result["parent_run_id"]
    assert "forecast.png" in (work / "artifacts/report/report.md").read_text()

    # A budget no beta meets (knowledge must rise by a whole point): nothing registered, one line, exit 1.
    code = main(["select-beta", "--workdir", str(work), "-S", "select.forgetting_budget={knowledge: -1.0}",
                 "-S", "select.max_runs=1"])  # fmt: skip
    assert code == 1
    selection = json.loads((work / "artifacts/select/selection.json").read_text())
    assert selection["version"] is None and selection["training_runs"] == 2
    assert selection["message"].startswith("the budget cannot be met: it asked knowledge <= -1")
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("sclora-adapter", "candidate")


def test_adding_a_seed_or_changing_one_rate_reruns_only_what_it_changes(pipeline):
    work, env, _ = pipeline
    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
    params["train"]["seeds"] = [0, 1]
    params["train"]["learning_rates"]["pissa"] = 3.0e-3
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    run(["dvc", "repro", "--single-item", "plan"], work, env)
    status = json.loads(run(["dvc", "status", "--json"], work, env).strip().splitlines()[-1])
    trained = {stage for stage in status if stage.startswith("train")}
    # The seed-0 runs of lora and sclora are up to date; pissa's rate changed; every seed-1 run is new.
    assert trained == {"train@benign-pissa-0", "train@benign-lora-1", "train@benign-pissa-1",
                       "train_sclora@benign-sclora-0.8-1"}, status  # fmt: skip
