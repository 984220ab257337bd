"""The register stage's choice: the best run within the forgetting budget, or one line naming the closest run."""

import math

from sclora.ops.registry import overshoot, within_budget
from tasks.register import _nothing_within, best_within_budget, closest_to_budget

BUDGET = {"knowledge": 0.25, "attack_success_rate": 0.05}
RUNS = {
    "benign-lora-0": {"forgetting": {"knowledge": 0.40, "attack_success_rate": 0.00}},  # over by 0.15
    "benign-pissa-0": {"forgetting": {"knowledge": 0.30, "attack_success_rate": 0.08}},  # over by 0.05 and 0.03
    "benign-milora-0": {"forgetting": {"knowledge": 0.10}},  # no safety delta at all
}


def test_overshoot_names_only_what_exceeds_the_budget():
    assert overshoot(RUNS["benign-lora-0"], BUDGET) == {"knowledge": 0.15000000000000002}
    assert overshoot(RUNS["benign-milora-0"], BUDGET) == {"attack_success_rate": math.inf}
    assert overshoot({"forgetting": {"knowledge": 0.2, "attack_success_rate": 0.05}}, BUDGET) == {}
    assert within_budget({"forgetting": {"knowledge": 0.2, "attack_success_rate": 0.05}}, BUDGET)
    assert not any(within_budget(metrics, BUDGET) for metrics in RUNS.values())


def test_the_closest_run_is_the_one_whose_worst_overshoot_is_smallest():
    closest = closest_to_budget(RUNS, BUDGET)
    assert closest["run"] == "benign-pissa-0"
    assert set(closest["overshoot"]) == {"knowledge", "attack_success_rate"}
    message = _nothing_within(closest, BUDGET)
    assert message == (
        "no run within the forgetting budget (attack_success_rate <= 0.05, knowledge <= 0.25); "
        "registered nothing. Closest: benign-pissa-0, over on attack_success_rate by 0.030, "
        "knowledge by 0.050"
    )
    assert "\n" not in message


def test_no_runs_at_all():
    assert closest_to_budget({}, BUDGET) is None
    assert _nothing_within(None, BUDGET).startswith("no adapter run to register")


def test_the_best_run_has_the_highest_utility_and_of_equals_forgets_least():
    runs = {
        "benign-lora-0": {"utility": 1.0, "forgetting": {"knowledge": 0.12, "attack_success_rate": 0.00}},
        "benign-pissa-0": {"utility": 1.0, "forgetting": {"knowledge": 0.03, "attack_success_rate": 0.01}},
        "benign-milora-0": {"utility": 0.9, "forgetting": {"knowledge": 0.00, "attack_success_rate": 0.00}},
    }
    assert best_within_budget(runs, BUDGET) == "benign-pissa-0"  # tied at 1.0: 0.04 forgotten against 0.12
    runs["benign-milora-0"]["utility"] = 1.01
    assert best_within_budget(runs, BUDGET) == "benign-milora-0"  # utility comes first
    assert best_within_budget({}, BUDGET) is None
