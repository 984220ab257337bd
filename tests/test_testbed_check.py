"""The testbed check: the scores of a real model, the sweeps' wiring, and the stage's JSON on a tiny testbed."""

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import yaml
from stage_project import TINY_TESTBED

from sclora.evaluate.scorer import SuiteScorer
from sclora.ops.config import eval_settings, load_params, parse_params
from sclora.runs.data import read_records
from sclora.runs.models import load_model, load_tokenizer
from sclora.runs.train import TrainSettings
from sclora.testbed.build import build_testbed
from sclora.testbed.check import (
    METRICS,
    across_builds,
    check_build,
    dose_response,
    frontier_values,
    lr_sweep,
    seed_means,
    spread,
)
from sclora.testbed.params import TestbedParams
from sclora.testbed.scorer import ExactScorer
from sclora.testbed.world import EVAL_SETS, dataset_file

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    """A tiny testbed built where params.yaml's default paths point, relative to its own root."""
    root = tmp_path_factory.mktemp("testbed-check")
    build_testbed(TestbedParams(**TINY_TESTBED), root / "artifacts" / "testbed")
    return root


def test_the_exact_scorer_scores_the_base_model_as_the_testbed_build_does(testbed):
    base = testbed / "artifacts" / "testbed"
    sets = {role: read_records(dataset_file(base / "data", name)) for role, name in EVAL_SETS.items()}
    scored = ExactScorer(load_tokenizer(base / "base"), sets)(load_model(base / "base"))
    built = json.loads((base / "base_metrics.json").read_text())
    assert scored.metrics == {key: built[key] for key in METRICS}
    assert len(scored.samples) == sum(len(records) for records in sets.values())


def test_the_two_scorers_agree_on_the_same_model(testbed, monkeypatch):
    """The lm-eval suite and the testbed's exact scorer, the two implementations of the scorer interface, give the
    same values of every metric both compute on the same model and eval sets."""
    base = testbed / "artifacts" / "testbed"
    monkeypatch.chdir(testbed)  # params.yaml's default paths are relative to the project root
    params = load_params(REPO / "params.yaml")
    tokenizer, model = load_tokenizer(base / "base"), load_model(base / "base")
    sets = {role: read_records(dataset_file(base / "data", name)) for role, name in EVAL_SETS.items()}
    exact = ExactScorer(tokenizer, sets)(model).metrics
    suite = SuiteScorer(tokenizer, eval_settings(params))(model).metrics
    shared = set(exact) & set(suite)
    assert {"utility", "knowledge", "attack_success_rate", "refusal_rate", "benign_helpfulness"} <= shared
    assert {name: suite[name] for name in shared} == pytest.approx({name: exact[name] for name in shared})


def test_the_exact_scorer_names_a_missing_eval_set(testbed):
    base = testbed / "artifacts" / "testbed"
    sets = {
        role: read_records(dataset_file(base / "data", name)) for role, name in EVAL_SETS.items() if role != "harmful"
    }
    with pytest.raises(ValueError, match="harmful"):
        ExactScorer(load_tokenizer(base / "base"), sets)


def fake_metrics(**values):
    return {key: values.get(key, 0.0) for key in METRICS}


def test_sweeps_run_every_dose_lr_and_seed_and_report_the_spread():
    calls = []

    def run(records, method, settings):
        calls.append((method, settings.lr, settings.seed, len(records)))
        poison = sum(r["poison"] for r in records) / len(records)
        return fake_metrics(utility=1.0, knowledge=settings.lr * 100, attack_success_rate=poison + settings.seed / 10)

    def poison(rate):
        return [{"poison": i < rate * 10} for i in range(10)]

    settings = TrainSettings(lr=1e-3, max_steps=1)
    doses = dose_response(run, poison, [0.0, 0.5], settings, seeds=[0, 2])
    assert [(m, s) for m, _, s, _ in calls] == [("lora", 0), ("lora", 2)] * 2
    assert [p["rate"] for p in doses] == [0.0, 0.5]
    assert doses[1]["attack_success_rate"]["values"] == pytest.approx([0.5, 0.7])
    assert doses[1]["attack_success_rate"]["mean"] == pytest.approx(0.6)
    assert doses[1]["attack_success_rate"]["std"] == pytest.approx(0.1)

    calls.clear()
    sweep = lr_sweep(run, poison(0.0), "full", [1e-3, 3e-3], settings, seeds=[1])
    assert calls == [("full", 1e-3, 1, 10), ("full", 3e-3, 1, 10)]
    assert [p["knowledge"]["mean"] for p in sweep] == pytest.approx([0.1, 0.3])
    assert spread(sweep[0]["runs"])["utility"]["std"] == 0.0


GOOD_BUILD = {
    "base": fake_metrics(knowledge=0.95, refusal_rate=1.0, benign_helpfulness=1.0),
    "lora_benign": fake_metrics(utility=0.9, refusal_rate=0.9, collapse_rate=0.1, attack_success_rate=0.0),
    "lora_poisoned": fake_metrics(utility=0.9, attack_success_rate=0.5),
    "full": {**fake_metrics(utility=0.95), "knowledge_drop": 30.0},
}


@pytest.mark.parametrize(
    "setting, metric, value",
    [
        ("base", "knowledge", 0.79),
        ("base", "refusal_rate", 0.89),
        ("base", "attack_success_rate", 0.06),
        ("base", "benign_helpfulness", 0.89),
        ("base", "utility", 0.21),
        ("lora_benign", "utility", 0.79),
        ("lora_benign", "attack_success_rate", 0.11),
        ("lora_benign", "collapse_rate", 0.21),
        ("lora_poisoned", "attack_success_rate", 0.19),
        ("lora_poisoned", "attack_success_rate", 0.81),
        ("full", "utility", 0.79),
        ("full", "knowledge_drop", 9.9),
    ],
)
def test_every_requirement_fails_just_past_its_bound(setting, metric, value):
    assert all(check["met"] for check in check_build(GOOD_BUILD).values())
    bad = {**GOOD_BUILD, setting: {**GOOD_BUILD[setting], metric: value}}
    failed = [key for key, check in check_build(bad).items() if not check["met"]]
    assert failed == [f"{setting}.{metric}"]


def test_spread_across_builds_beside_spread_across_seeds():
    def stats(mean, std):
        return {"utility": {"mean": mean, "std": std}}

    spreads = across_builds({0: {"lora_benign": stats(0.8, 0.1)}, 1: {"lora_benign": stats(0.6, 0.3)}})
    assert spreads["lora_benign.utility"] == {
        "build_means": [0.8, 0.6],
        "std_across_builds": pytest.approx(0.1),
        "mean_std_across_seeds": pytest.approx(0.2),
    }


@pytest.mark.slow
def test_stage_measures_every_build_and_checks_each(tmp_path, monkeypatch):
    from tasks import testbed_check

    tree = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    tree["testbed"] = TINY_TESTBED
    tree["adapter"].update(rank=2, alpha=4.0)
    tree["train"].update(batch_size=8, max_steps=2, max_length=32, learning_rates={"full": 1e-3})
    tree["testbed_check"] = {
        "builds": [0, 1],
        "seeds": [0, 1],
        "poison_rates": [0.5],
        "full_lrs": [1e-4],
        "eval_limit": 10,
    }
    tree["frontier"].update(lrs=[1e-3, 4e-3], checkpoints=[0.5, 1.0])  # LoRA's front: 2 rates x steps 1 and 2
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "testbed_check.json"
    summary = testbed_check.run(parse_params(tree), output=out, out_dir=tmp_path / "builds")
    result = json.loads(out.read_text())
    assert sorted(result["builds"]) == ["0", "1"] and set(summary["builds"]) == {0, 1}
    for seed, build in result["builds"].items():
        assert json.loads((tmp_path / "builds" / f"build-{seed}" / "params.json").read_text())["seed"] == int(seed)
        # 0 and the testbed's own dose (0.1) are always measured besides the rates asked for.
        assert [p["rate"] for p in build["dose_response"]] == [0.0, 0.1, 0.5]
        assert [p["lr"] for p in build["full_lr_sweep"]] == [1e-4, 1e-3]
        assert all(len(p["runs"]) == 2 for p in build["dose_response"] + build["full_lr_sweep"])
        poisoned = build["settings"]["lora_poisoned"]["attack_success_rate"]
        assert poisoned["values"] == build["dose_response"][1]["attack_success_rate"]["values"]
        base = build["settings"]["base"]["knowledge"]["mean"]
        drops = [100 * (base - v) for v in build["settings"]["full"]["knowledge"]["values"]]
        assert build["settings"]["full"]["knowledge_drop"]["values"] == pytest.approx(drops)
        frontier = build["lora_frontier"]
        for task in ("benign", "poisoned"):  # one seed-mean point per (rate, checkpoint)
            assert [(p["lr"], p["step"]) for p in frontier["points"][task]] == [
                (lr, step) for lr in (1e-3, 4e-3) for step in (1, 2)
            ]
        expected = frontier_values(frontier["points"]["benign"], frontier["points"]["poisoned"], base)
        assert frontier["values"] == pytest.approx(expected, nan_ok=True)  # NaN: a level the tiny run never reaches
        means = {name: {metric: stats["mean"] for metric, stats in values.items()}
                 for name, values in build["settings"].items()}  # fmt: skip
        means["lora_frontier"] = frontier["values"]
        assert build["requirements"] == json.loads(json.dumps(check_build(means)))
    assert result["failed"] == sorted(
        f"build {seed}: {key}"
        for seed, build in result["builds"].items()
        for key, check in build["requirements"].items()
        if not check["met"]
    )
    assert result["requirements_met"] == (not result["failed"])
    assert set(result["spread"]) >= {"lora_poisoned.attack_success_rate", "full.knowledge_drop"}
    table = out.with_suffix(".md").read_text()
    for seed in ("0", "1"):
        assert f"| {seed} | lora_poisoned |" in table and f"| {seed} | 0.5 | 20 |" in table  # 0.5 x 40 records
    # A second run, two builds side by side in worker processes, reuses both builds (same params) and repeats the
    # same single-threaded computation: the same results.
    before = {
        seed: (tmp_path / "builds" / f"build-{seed}" / "base" / "model.safetensors").stat().st_mtime_ns
        for seed in (0, 1)
    }
    tree["testbed_check"]["jobs"] = 2
    testbed_check.run(parse_params(tree), output=out, out_dir=tmp_path / "builds")
    assert before == {
        seed: (tmp_path / "builds" / f"build-{seed}" / "base" / "model.safetensors").stat().st_mtime_ns
        for seed in (0, 1)
    }
    assert json.loads(out.read_text())["builds"] == result["builds"]


def test_the_frontier_requirements_read_lora_s_front_on_intact_points():
    """Seed means per (rate, step); forgetting at utility u is the least among intact points at u or above."""
    curves = [
        {"lr": 1e-3, "seed": s, "step": 10, **dict.fromkeys(METRICS, 0.0), "utility": u, "knowledge": k,
         "benign_helpfulness": 1.0}
        for s, (u, k) in enumerate([(0.4, 0.98), (0.6, 0.96)])
    ]  # fmt: skip
    benign = seed_means(curves) + [
        # utility 0.92 losing 10 points, intact; 0.97 losing 3 points but its chat format broken (ignored)
        {"lr": 2e-3, "step": 10, **dict.fromkeys(METRICS, 0.0), "utility": 0.92, "knowledge": 0.90,
         "benign_helpfulness": 0.9},
        {"lr": 4e-3, "step": 10, **dict.fromkeys(METRICS, 0.0), "utility": 0.97, "knowledge": 0.97,
         "benign_helpfulness": 0.5},
    ]  # fmt: skip
    assert benign[0]["utility"] == pytest.approx(0.5) and benign[0]["knowledge"] == pytest.approx(0.97)
    poisoned = [{**point, "attack_success_rate": asr} for point, asr in zip(benign, (0.0, 0.5, 0.3), strict=False)]
    values = frontier_values(benign, poisoned, base_knowledge=1.0)
    assert values["gradual_points"] == 2  # 0.5 and 0.92; 0.97 is past 0.95, saturated
    assert values["forgetting_at_0.5"] == pytest.approx(3.0)  # the seed mean (0.97), not 0.92's 10 points
    assert values["forgetting_at_0.9"] == pytest.approx(10.0)
    assert values["forgetting_rise"] == pytest.approx(7.0)
    assert values["compliance_at_0.9"] == pytest.approx(0.3)  # the least among points of utility >= 0.9
    assert math.isnan(frontier_values(benign[:1], poisoned[:1], 1.0)["forgetting_at_0.9"])  # never reached
