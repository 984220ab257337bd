"""Learning-rate tuning: chosen on the validation split alone, and what the train items then use."""

import json
from pathlib import Path

import pytest
from stage_project import project_params, stage, write_params

from sclora.ops.config import ParamsError, load_params, validation_settings
from tasks.artifacts import tune_item, tune_path
from tasks.tune import choose, tuned_spec


def test_the_best_validation_utility_wins_and_ties_go_to_the_smaller_rate():
    points = [{"lr": 1e-3, "validation_utility": 0.7}, {"lr": 2e-3, "validation_utility": 0.9},
              {"lr": 4e-3, "validation_utility": 0.9}, {"lr": 8e-3, "validation_utility": 0.2}]  # fmt: skip
    assert choose(points)["lr"] == 2e-3


def test_validation_reads_the_validation_source_with_the_utility_tasks_only():
    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    settings = validation_settings(params)
    assert settings.data_files == {"sclora_task": "artifacts/testbed/data/val_task.jsonl"}
    assert settings.utility == ["sclora_task"]
    assert not (settings.knowledge or settings.harmful or settings.benign or settings.refusal_margin)


def test_tuned_rates_must_cover_every_run(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: {methods: [lora, pissa], lr_source: artifacts/tune}\ntune: {methods: [lora]}\n")
    with pytest.raises(ParamsError, match="tune does not cover pissa, sclora beta 0"):
        load_params(path)
    path.write_text("tune: {betas: [0.3]}\nsolve: {betas: [0.5]}\n")
    with pytest.raises(ParamsError, match=r"tune.betas: \[0.3\] not in solve.betas"):
        load_params(path)


def test_tune_then_train_with_the_tuned_rate(project):
    params = project_params(project)
    beta = params["solve"]["betas"][0]
    params["tune"] = {"methods": ["lora"], "betas": [beta], "task": "benign", "factors": [0.5, 2.0]}
    write_params(project, params)
    for argv in (
        ("prepare",),
        ("capture",),
        ("evaluate_base",),
        ("solve", str(beta)),
        ("tune", "lora"),
        ("tune", f"sclora-{beta}"),
    ):
        assert stage(*argv) == 0, argv
    tuned = json.loads(Path("artifacts/tune/lora.json").read_text())
    base_lr = params["train"]["learning_rates"]["lora"]
    assert [p["lr"] for p in tuned["points"]] == [pytest.approx(base_lr * 0.5), pytest.approx(base_lr * 2.0)]
    assert tuned["chosen_lr"] == choose(tuned["points"])["lr"]
    assert all(0 <= p["validation_utility"] <= 1 and "knowledge" in p["eval"] for p in tuned["points"])
    assert json.loads(Path(f"artifacts/tune/sclora-{beta}.json").read_text())["beta"] == beta
    assert stage("tune", "pissa") == 1  # not in tune.methods: one-line error

    params["train"]["lr_source"] = "artifacts/tune"
    params["train"]["methods"] = ["lora"]
    write_params(project, params)
    assert stage("plan") == 0
    assert stage("train", "benign-lora-0") == 0
    assert json.loads(Path("artifacts/runs/benign-lora-0/run.json").read_text())["lr"] == tuned["chosen_lr"]


def test_each_sclora_variant_is_tuned_on_its_own_item_and_seed():
    overrides = ["tune.betas=[0.5]", "solve.betas=[0.5]", "tune.sclora_variants=[sclora, sclora_frozen]"]
    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml", overrides)
    frozen = tuned_spec(params, "sclora_frozen-0.5")
    assert (frozen.method, frozen.beta, frozen.seed) == ("sclora_frozen", 0.5, params.tune.seed)
    assert frozen.seed not in params.train.seeds
    assert tune_path(tune_item("sclora_frozen", 0.5)).name == "sclora_frozen-0.5.json"
    with pytest.raises(ValueError, match="unknown tune item 'sclora_frozen-0.9'"):
        tuned_spec(params, "sclora_frozen-0.9")
