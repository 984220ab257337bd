"""A real `dvc repro` of dvc.yaml in a temporary git + DVC copy of the repository, on a tiny grid.

Tiny testbed, one task, two baselines (lora, pissa) and SC-LoRA at one beta, a few steps, MLflow in a
SQLite file under tmp: the session's `tiny_repro` (conftest.py). Checks every stage's outputs, that DVC
sees the workspace as clean, that `dvc metrics show` has every run's metrics, and that a second
`dvc repro` runs nothing.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from stage_project import run

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
