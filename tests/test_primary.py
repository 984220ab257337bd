"""Selection apart from measurement, speed apart from preservation, and the primary contrast's population and power
(sclora.analysis.fronts.read_at, sclora.analysis.matched, sclora.analysis.primary).

The simulation is a protocol's points in a world with what the testbed's data showed (docs/protocol.md): a
build x configuration interaction (sd 0.036, above the seed spread 0.025), forgetting that rises with the rate at
matched utility, utility away from saturation (levels 0.5-0.8) and knowledge and utility measured on finite item
sets (binomial, the eval sets' sizes)."""

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from sclora.analysis.decision import FAILS, HOLDS, Rule
from sclora.analysis.fronts import read_at
from sclora.analysis.matched import Reading, matched_results, rate_results, rate_task, reading_for
from sclora.analysis.primary import GRID_SENSITIVE, Primary, along_rates, judge_primary, population_text
from sclora.analysis.results import config_runs
from tasks.frontier import knowledge_halves

LRS = (3.5e-4, 5e-4, 7.1e-4, 1e-3, 1.41e-3, 2e-3)
STEPS = (50, 100, 200, 400)
LORA, SCLORA = ("lora", None), ("sclora", 0.9)
PRIMARY = Primary(SCLORA, LORA, 0.8, "poisoned")
HELD_APART = Reading()


def world(
    rng,
    *,
    builds=6,
    seeds=2,
    gain=0.0,
    speed=1.0,
    interaction=0.036,
    spread=0.025,
    rate_effect=0.03,
    facts=150,
    items=300,
):
    """A protocol's points. Utility 1 - exp(-5 lr step v) (v: the configuration's speed, sclora's `speed`, a seed's
    own spread), validation and eval utility each read on `items` items; knowledge forgetting 0.25 u^2 plus
    `rate_effect` per doubling of the rate above the grid's floor (scaled by u: it grows with learning), a build
    effect, a build x configuration effect (sd `interaction`), a seed effect (sd `spread`) and sclora's `gain`
    (knowledge kept at the same rate and utility), each knowledge half read on `facts` facts."""
    points, base = [], {}
    for build in range(builds):
        known = float(rng.uniform(0.85, 0.95))
        base[build] = {"knowledge": known, "knowledge_select": known, "knowledge_report": known}
        build_effect = rng.normal(0, 0.05)
        for config in (LORA, SCLORA):
            shared = build_effect + rng.normal(0, interaction) - (gain if config == SCLORA else 0.0)
            for seed in range(seeds):
                offset, pace = shared + rng.normal(0, spread), math.exp(rng.normal(0, 4 * spread))
                velocity = pace * (speed if config == SCLORA else 1.0)
                for lr, step in itertools.product(LRS, STEPS):
                    u = 1 - math.exp(-5 * lr * step * velocity)
                    lost = offset + 0.25 * u**2 + rate_effect * math.log2(lr / LRS[0]) * u
                    kept = min(max(known - lost, 0.0), 1.0)
                    points.append({
                        "build": build, "task": "poisoned", "method": config[0], "beta": config[1], "seed": seed,
                        "lr": lr, "step": step, "max_steps": STEPS[-1], "utility": rng.binomial(items, u) / items,
                        "validation_utility": rng.binomial(items, u) / items,
                        "knowledge": rng.binomial(2 * facts, kept) / (2 * facts),
                        "knowledge_select": rng.binomial(facts, kept) / facts,
                        "knowledge_report": rng.binomial(facts, kept) / facts,
                        "attack_success_rate": rng.binomial(items, 0.3 * u) / items,
                    })  # fmt: skip
    return points, base


def test_read_at_chooses_on_one_metric_and_reads_every_endpoint_on_the_same_models():
    points = [
        {"v": 0.4, "pick": 0.1, "other": 0.5, "asr": 0.2},
        {"v": 0.6, "pick": 0.2, "other": 0.1, "asr": 0.6},
        {"v": 0.6, "pick": 0.3, "other": 0.0, "asr": 0.0},  # dominated on the chosen metric: never read
        {"v": 0.9, "pick": 0.5, "other": 0.9, "asr": 1.0},
    ]
    read = read_at(points, 0.5, lambda p: p["pick"], {"other": lambda p: p["other"], "asr": lambda p: p["asr"]}, "v")
    assert read == pytest.approx({"other": 0.3, "asr": 0.4})  # halfway between the first two, for both endpoints
    assert read_at(points, 0.3, lambda p: p["pick"], {"other": lambda p: p["other"]}, "v") == {"other": 0.5}
    assert read_at(points, 0.95, lambda p: p["pick"], {"other": lambda p: p["other"]}, "v") is None


def test_the_matched_table_picks_on_one_half_and_reports_the_other():
    base = {0: {"knowledge": 0.9, "knowledge_select": 0.9, "knowledge_report": 0.9}}
    common = {"build": 0, "task": "poisoned", "method": "lora", "beta": None, "seed": 0, "step": 100}
    points = [  # A and B reach 0.8 on validation utility; B looks better on the select half, A on the report half
        {**common, "lr": 1e-3, "utility": 0.5, "validation_utility": 0.8, "knowledge_select": 0.6,
         "knowledge_report": 0.8, "knowledge": 0.7, "attack_success_rate": 0.1},
        {**common, "lr": 2e-3, "utility": 0.9, "validation_utility": 0.8, "knowledge_select": 0.8,
         "knowledge_report": 0.5, "knowledge": 0.65, "attack_success_rate": 0.3},
    ]  # fmt: skip
    assert reading_for(points, base) == HELD_APART and HELD_APART.held_apart
    (row,) = matched_results(points, base, [0.8]).rows
    assert row["knowledge"] == 0.5 and row["attack_success_rate"] == 0.3 and row["eval_utility"] == 0.9
    older = [{k: v for k, v in p.items() if k not in ("validation_utility", "knowledge_select")} for p in points]
    fallback = reading_for(older, base)
    assert fallback == Reading("utility", "knowledge", "knowledge") and "SAME knowledge facts" in fallback.describe()


def test_knowledge_halves_split_each_task_by_document():
    rows = [{"role": "knowledge", "task": "a", "doc_id": i, "scores": {"exact_match": float(i < 2)}} for i in range(4)]
    rows += [{"role": "knowledge", "task": "b", "doc_id": i, "scores": {"exact_match": 1.0}} for i in range(2)]
    rows.append({"role": "task", "task": "t", "doc_id": 0, "scores": {"exact_match": 0.0}})
    # a: documents 0, 2 -> 0.5 and 1, 3 -> 0.5; b: 1.0 and 1.0; the mean of the tasks' means
    assert knowledge_halves(rows) == {"knowledge_select": 0.75, "knowledge_report": 0.75}
    assert knowledge_halves([]) == {}


def test_speed_alone_gains_at_matched_utility_and_nothing_at_matched_rate():
    """sclora learns twice as fast and forgets exactly as LoRA does at the same rate and utility: at matched utility it
    reaches the level at a lower rate, where everything forgets less, and seems to keep more; along each rate the
    difference is nil."""
    points, base = world(np.random.default_rng(0), speed=2.0, interaction=0.0, spread=0.0, facts=10**6, items=10**6)
    points = [{**p, "knowledge_select": p["knowledge"], "knowledge_report": p["knowledge"]} for p in points]
    matched = matched_results(points, base, [0.8])
    gain = np.mean([np.mean(list(v.values())) for v in config_runs(matched, "poisoned at utility 0.8", *SCLORA,
                    "knowledge").values()]) - np.mean([np.mean(list(v.values())) for v in
                    config_runs(matched, "poisoned at utility 0.8", *LORA, "knowledge").values()])  # fmt: skip
    assert gain > 0.008  # 0.010 here: reached at about half the rate, the rate's share of forgetting saved
    along = along_rates(points, base, PRIMARY, Rule(), HELD_APART)
    assert len(along) == 3 and all(abs(e.mean) < 0.002 for e in along.values()), {lr: e.mean for lr, e in along.items()}
    assert {row["task"] for row in rate_results(points, base, [0.8]).rows} >= {rate_task("poisoned", 0.8, 2e-3)}


def test_the_primary_names_its_population_and_flags_a_reading_that_moves_with_the_budget():
    rng = np.random.default_rng(1)
    points, base = world(rng, gain=0.12)
    general = judge_primary(points, base, PRIMARY, Rule(), HELD_APART)
    assert general["rule"]["builds"] == "unit" and general["population"] == population_text(6)
    assert "builds in general" in general["evidence"][-1] and general["rule_verdict"] == HOLDS
    assert "(12 seeds in 6 builds as units, runs only)" in general["evidence"][0]  # the mean of the builds' means
    few = judge_primary([p for p in points if p["build"] < 2], base, PRIMARY, Rule(), HELD_APART)
    assert few["rule"]["builds"] == "block" and "these 2 build(s) only" in few["population"]
    # sclora's knowledge at step 400 raised by 0.2: the full budget's reading moves, half the budget's does not
    moved = [{**p, "knowledge_report": p["knowledge_report"] + 0.2} if p["method"] == "sclora" and p["step"] == 400
             else p for p in points]  # fmt: skip
    verdict = judge_primary(moved, base, PRIMARY, Rule(), HELD_APART)
    assert verdict["grid_sensitive"] and verdict["verdict"] == GRID_SENSITIVE
    assert verdict["sensitivity"]["as run"]["difference"] - verdict["sensitivity"]["half the step budget"][
        "difference"] > 0.02  # fmt: skip


def primary_rates(replicates: int, seed: int, **world_args) -> dict:
    rng = np.random.default_rng(seed)
    counts = Counter(
        judge_primary(*world(rng, **world_args), PRIMARY, Rule(), HELD_APART)["rule_verdict"] for _ in range(replicates)
    )
    return {verdict: count / replicates for verdict, count in counts.items()}


@pytest.mark.slow
def test_the_primary_rule_keeps_its_error_rates_and_its_power_where_the_data_put_it():
    """Equal configurations with the measured build x configuration interaction and rate effect, 6 builds x 2 seeds,
    utility 0.8 on 300 items, 150 facts a half: "holds" and "does not hold" each at most 5 % plus Monte Carlo error
    (100 protocols: about 2 points); a clear win (+0.10 knowledge at the same rate and utility) holds in at least
    80 %. Measured (these seeds): equal holds 0.02, does not hold 0.00; the win holds 1.00. Over 100 other
    protocols each: equal 0.04 / 0.03; +0.05 holds 0.52, +0.08 0.86, +0.10 0.96 (docs/protocol.md: what the
    allocation can detect)."""
    equal = primary_rates(100, seed=20)
    assert equal.get(HOLDS, 0) <= 0.10 and equal.get(FAILS, 0) <= 0.10, equal
    win = primary_rates(50, seed=21, gain=0.10)
    assert win.get(HOLDS, 0) >= 0.8, win
