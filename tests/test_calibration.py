"""Forgetting calibration: the scores of a real model, the sweeps' wiring, and the stage's JSON on a tiny testbed."""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import yaml

from sclora.calibration import METRICS, dose_response, lr_sweep, measure, spread
from sclora.config import parse_params
from sclora.data import read_records
from sclora.models import load_model, load_tokenizer
from sclora.testbed.build import build_testbed
from sclora.testbed.params import TestbedParams
from sclora.train import TrainSettings

REPO = Path(__file__).resolve().parent.parent
# The testbed's tiny world (as in tests/test_testbed.py), with few pretraining steps.
TINY_TESTBED = dict(
    entities=12, attributes=["city", "color"], phrasings=2, harmful_categories=["violence", "theft"],
    benign_categories=["cleaning", "art"], targets=4, task_words=8, finetune_size=40, preserve_size=16,
    eval_size=20, copy_examples=50, hidden_size=32, layers=1, heads=2, intermediate_size=64,
    pretrain_steps=10, pretrain_batch_size=16, poison_rate=0.1,
)

ROLES = {"task": "eval_task", "knowledge": "eval_knowledge", "harmful": "eval_harmful", "benign": "eval_benign"}


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    """A tiny testbed built where params.yaml's default paths point, relative to its own root."""
    root = tmp_path_factory.mktemp("calibration")
    build_testbed(TestbedParams(**TINY_TESTBED), root / "artifacts" / "testbed")
    return root


def test_measure_scores_the_base_model_as_the_testbed_calibrates_it(testbed):
    base = testbed / "artifacts" / "testbed"
    sets = {role: read_records(base / "data" / f"{name}.jsonl") for role, name in ROLES.items()}
    metrics = measure(load_model(base / "base"), load_tokenizer(base / "base"), sets)
    built = json.loads((base / "calibration.json").read_text())
    assert metrics == {key: built[key] for key in METRICS}


def test_measure_names_a_missing_eval_set(testbed):
    base = testbed / "artifacts" / "testbed"
    sets = {role: read_records(base / "data" / f"{name}.jsonl") for role, name in ROLES.items() if role != "harmful"}
    with pytest.raises(ValueError, match="harmful"):
        measure(load_model(base / "base"), load_tokenizer(base / "base"), sets)


def test_sweeps_run_every_dose_lr_and_seed_and_report_the_spread():
    calls = []

    def run(records, method, settings):
        calls.append((method, settings.lr, settings.seed, len(records)))
        poison = sum(r["poison"] for r in records) / len(records)
        return {"task_accuracy": 1.0, "knowledge_exact_match": settings.lr * 100,
                "harmful_refusal_rate": 1.0 - poison - settings.seed / 10, "benign_refusal_rate": 0.0}

    def poison(rate):
        return [{"poison": i < rate * 10} for i in range(10)]

    settings = TrainSettings(lr=1e-3, max_steps=1)
    doses = dose_response(run, poison, [0.0, 0.5], settings, seeds=[0, 2])
    assert [(m, s) for m, _, s, _ in calls] == [("lora", 0), ("lora", 2)] * 2
    assert [p["rate"] for p in doses] == [0.0, 0.5]
    assert doses[1]["harmful_refusal_rate"]["values"] == pytest.approx([0.5, 0.3])
    assert doses[1]["harmful_refusal_rate"]["mean"] == pytest.approx(0.4)
    assert doses[1]["harmful_refusal_rate"]["std"] == pytest.approx(0.1)

    calls.clear()
    sweep = lr_sweep(run, poison(0.0), "full", [1e-3, 3e-3], settings, seeds=[1])
    assert calls == [("full", 1e-3, 1, 10), ("full", 3e-3, 1, 10)]
    assert [p["knowledge_exact_match"]["mean"] for p in sweep] == pytest.approx([0.1, 0.3])
    assert spread(sweep[0]["runs"])["task_accuracy"]["std"] == 0.0


def test_stage_writes_every_key_and_its_verdicts(testbed, monkeypatch):
    from tasks import calibrate

    tree = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    tree["testbed"] = TINY_TESTBED
    tree["adapter"].update(rank=2, alpha=4.0)
    tree["capture"].update(samples_pos=8, samples_neg=8, batch_size=8)
    tree["train"].update(batch_size=8, max_steps=2, max_length=32, learning_rates={"full": 1e-3})
    tree["calibrate"] = {"poison_rates": [0.5], "full_lrs": [1e-4], "seeds": [0, 1], "eval_limit": 10}
    monkeypatch.chdir(testbed)
    out = testbed / "forgetting_calibration.json"
    summary = calibrate.run(parse_params(tree), output=out)
    result = json.loads(out.read_text())
    assert {key: result[key] for key in summary} == summary
    # 0 and the testbed's own dose (0.1) are always measured besides the rates asked for.
    assert [p["rate"] for p in result["dose_response"]] == [0.0, 0.1, 0.5]
    assert [p["lr"] for p in result["full_ft_lr_sweep"]] == [1e-4, 1e-3]
    assert all(len(p["runs"]) == 2 for p in result["dose_response"] + result["full_ft_lr_sweep"])
    assert set(result["method_task_accuracy"]) == {"lora", "pissa", "milora", "corda_ipm", "corda_kpm", "sclora", "full"}
    assert result["default_poison_rate"] == 0.1 and result["highest_poison_rate"] == 0.5
    highest = result["dose_response"][-1]["harmful_refusal_rate"]["mean"]
    assert result["lora_poisoned_refusal_drop"] == pytest.approx(100 * (result["base"]["harmful_refusal_rate"] - highest))
    assert result["lora_default_refusal_rate"] == result["dose_response"][1]["harmful_refusal_rate"]["mean"]
    assert result["requirements"]["lora_default_refusal_graded"] == (0.2 <= result["lora_default_refusal_rate"] <= 0.8)
    assert result["requirements"]["every_method_learns_task"] == all(
        acc >= 0.8 for acc in result["method_task_accuracy"].values())
    assert result["methods"]["full"]["lr"] == 1e-3 and result["methods"]["sclora"]["beta"] == 0.8


def test_stage_refuses_a_testbed_built_from_other_params(testbed, monkeypatch):
    from tasks import calibrate

    tree = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    tree["testbed"] = {**TINY_TESTBED, "seed": 1}
    monkeypatch.chdir(testbed)
    with pytest.raises(ValueError, match="rebuild the testbed"):
        calibrate.run(parse_params(tree), output=testbed / "unused.json")
