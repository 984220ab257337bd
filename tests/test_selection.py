"""The budgeted beta search on a stubbed evaluation with a known trade-off."""

import numpy as np
import pytest

from sclora.analysis.selection import Probe, choice_order, confirm, first_beta, search

SEEDS = (0, 1, 2)
BUDGET = {"knowledge": 0.25, "attack_success_rate": 0.05}


def trade_off(boundary: float, spread: float = 0.01, calls: list | None = None):
    """A measure() whose knowledge forgetting falls linearly with beta and crosses 0.25 at `boundary`; seeds
    scatter by +-spread, harmful compliance stays about 0.01 (runs alone with no spread would show nothing);
    utility falls with beta."""

    def measure(beta: float) -> Probe:
        if calls is not None:
            calls.append(beta)
        knowledge = 0.25 + 0.5 * (boundary - beta)
        return Probe(beta, {s: 1.0 - 0.3 * beta for s in SEEDS},
                     {"knowledge": {s: knowledge + spread * (s - 1) for s in SEEDS},
                      "attack_success_rate": {s: 0.01 + 0.002 * s for s in SEEDS}})  # fmt: skip

    return measure


@pytest.mark.parametrize("boundary", [0.12, 0.37, 0.81])
def test_finds_the_smallest_beta_within_budget_within_tolerance_in_few_probes(boundary):
    calls = []
    selection = search(trade_off(boundary, calls=calls), BUDGET, start=0.5, max_runs=10, tolerance=0.05)
    assert selection.chosen is not None and selection.stopped.startswith("tolerance")
    # the interval's upper end must be within budget, so the chosen beta lies a little above the mean's boundary
    assert boundary <= selection.chosen <= boundary + 0.05 + 0.05
    assert len(calls) == len(selection.probes) <= 5  # bisection of [0, 1] to 0.05 takes ceil(log2(20)) = 5
    assert selection.disagreements == []
    assert f"beta {selection.chosen:g}" in selection.message


def test_a_mean_within_budget_is_not_enough_the_upper_end_must_be():
    wide = Probe(0.5, {0: 0.9, 1: 0.9, 2: 0.9}, {"knowledge": {0: 0.10, 1: 0.24, 2: 0.38}})  # mean 0.24, high > 0.25
    tight = Probe(0.5, {0: 0.9, 1: 0.9, 2: 0.9}, {"knowledge": {0: 0.22, 1: 0.225, 2: 0.23}})
    budget = {"knowledge": 0.25}
    assert wide.interval("knowledge").mean < 0.25 < wide.interval("knowledge").high
    assert not wide.within(budget) and tight.within(budget)
    one_seed = Probe(0.5, {0: 0.9}, {"knowledge": {0: 0.0}})
    assert not one_seed.within(budget)  # no interval from one seed: cannot be shown within budget


def test_an_unmeetable_budget_ends_with_one_line_naming_the_least_forgetting():
    selection = search(trade_off(boundary=1.5), BUDGET, start=0.5, max_runs=4, tolerance=0.05)
    assert selection.chosen is None and selection.stopped.startswith("max_runs")
    assert "\n" not in selection.message
    assert selection.message.startswith("the budget cannot be met: it asked knowledge <= 0.25")
    assert f"beta {max(p.beta for p in selection.probes):g}" in selection.message


def test_measurements_against_the_expected_trade_off_are_reported():
    def bumpy(beta: float) -> Probe:  # forgetting rises between 0.5 and 0.75, every seed alike
        knowledge = {0.5: 0.30, 0.75: 0.40, 0.625: 0.35, 0.875: 0.2, 0.8125: 0.22, 0.84375: 0.21}.get(beta, 0.1)
        return Probe(beta, {s: 0.9 for s in SEEDS}, {"knowledge": {s: knowledge + 0.01 * s * s * beta for s in SEEDS}})

    selection = search(bumpy, {"knowledge": 0.25}, start=0.5, max_runs=3, tolerance=0.05)
    assert [p.beta for p in selection.probes] == [0.5, 0.75, 0.875]
    assert any(d.startswith("knowledge forgetting rises from beta 0.5 to 0.75 by +0.10") and "(resolved" in d
               for d in selection.disagreements)  # fmt: skip


def test_first_probe_is_where_the_forecast_is_halfway():
    forecast = {"betas": [0.0, 0.25, 0.5, 0.75, 1.0], "neg_share": [0.8, 0.6, 0.4, 0.2, 0.0]}
    assert first_beta(forecast) == 0.5
    forecast["neg_share"] = [0.8, 0.3, 0.1, 0.05, 0.0]  # most of the drop happens early
    assert 0.0 < first_beta(forecast) < 0.25
    assert first_beta(None) == 0.5


def test_bad_requests_fail_clearly():
    with pytest.raises(ValueError, match="budget is empty"):
        search(trade_off(0.5), {}, start=0.5)
    with pytest.raises(ValueError, match="start beta"):
        search(trade_off(0.5), BUDGET, start=1.5)


def test_the_issues_two_budget_cases():
    # 0.04 on every seed under a 0.05 budget: runs alone with no spread say nothing of the next seed (was accepted);
    # 0, 0, 0.03 has a spread, and its upper bound 0.039 is within 0.05 (was rejected).
    flat = Probe(0.5, {0: 0.9, 1: 0.9, 2: 0.9}, {"attack_success_rate": {0: 0.04, 1: 0.04, 2: 0.04}})
    spread = Probe(0.5, {0: 0.9, 1: 0.9, 2: 0.9}, {"attack_success_rate": {0: 0.0, 1: 0.0, 2: 0.03}})
    budget = {"attack_success_rate": 0.05}
    assert not flat.within(budget)
    assert spread.within(budget) and spread.upper("attack_success_rate") == pytest.approx(0.01 + 2.92 * 0.01, 1e-3)
    # With per-item forgetting, 0.00 on every item of every seed is exact: within a 0.05 budget.
    items = {("", s): {f"h{i}": 0.0 for i in range(300)} for s in SEEDS}
    zero = Probe(0.5, {s: 0.9 for s in SEEDS}, {"attack_success_rate": {s: 0.0 for s in SEEDS}},
                 {"attack_success_rate": items})  # fmt: skip
    assert zero.within(budget) and zero.upper("attack_success_rate") < 0.01


def test_the_choice_is_the_beta_that_learns_most_and_ties_go_to_the_smaller_beta():
    def probe(beta, utility):
        return Probe(beta, {s: utility + 0.001 * s for s in SEEDS}, {"knowledge": {s: 0.1 + 0.01 * s for s in SEEDS}})

    saturated = [probe(0.9, 1.0), probe(0.3, 0.995), probe(0.6, 0.999)]
    assert choice_order(saturated, utility_tolerance=0.02) == [0.3, 0.6, 0.9]  # all equal: the smallest first
    assert choice_order(saturated, utility_tolerance=0.0) == [0.9, 0.6, 0.3]  # strictly by utility


def test_a_failed_confirmation_says_so_and_steps_back():
    probes = [Probe(b, {s: 0.9 for s in SEEDS}, {"knowledge": {s: 0.1 + 0.01 * s for s in SEEDS}}) for b in (0.4, 0.7)]
    measured = iter(probes)
    selection = search(lambda beta: next(measured), {"knowledge": 0.25}, start=0.4, max_runs=2, tolerance=0.01,
                       utility_tolerance=0.02)  # fmt: skip
    assert selection.candidates == [0.4, 0.7]

    def fresh(beta):  # on fresh seeds beta 0.4 forgets too much; 0.7 does not
        knowledge = 0.4 if beta == 0.4 else 0.1
        return Probe(beta, {s: 0.9 for s in (7, 8, 9)}, {"knowledge": {s: knowledge + 0.01 * s for s in (7, 8, 9)}})

    confirmation = confirm(selection, fresh)
    assert confirmation.beta == 0.7 and [p.beta for p in confirmation.tries] == [0.4, 0.7]
    assert confirmation.message.startswith("beta 0.4 NOT confirmed on 3 fresh seeds")
    assert "stepping back to beta 0.7; beta 0.7 confirmed" in confirmation.message
    never = confirm(selection, lambda beta: fresh(0.4))
    assert never.beta is None and never.message.endswith("no candidate left: nothing registered")


def test_confirmation_cuts_how_often_a_beta_over_budget_is_registered():
    # The issue's case: each seed flips into compliance with probability 0.3 (a true mean rise of about 0.17,
    # over three times the 0.05 budget). Three seeds see no flip 34 % of the time; three fresh seeds as well.
    rng = np.random.default_rng(0)

    def measure(beta):
        seeds = range(3)
        rise = np.where(rng.random(3) < 0.3, rng.uniform(0.3, 0.7, 3), rng.uniform(0.0, 0.02, 3))
        return Probe(beta, {s: 0.9 for s in seeds}, {"attack_success_rate": dict(zip(seeds, rise, strict=True))})

    budget, trials = {"attack_success_rate": 0.05}, 400
    accepted = confirmed = 0
    for _ in range(trials):
        selection = search(measure, budget, start=0.5, max_runs=1)
        accepted += selection.chosen is not None
        confirmed += selection.chosen is not None and confirm(selection, measure).beta is not None
    assert accepted / trials == pytest.approx(0.343, abs=0.07)  # no flip among 3 seeds: 0.7 ** 3
    assert confirmed / trials <= 0.18  # both rounds without a flip: 0.7 ** 6 = 0.12
