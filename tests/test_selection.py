"""The budgeted beta search on a stubbed evaluation with a known trade-off."""

import pytest

from sclora.selection import Probe, first_beta, search

SEEDS = (0, 1, 2)
BUDGET = {"knowledge": 0.25, "attack_success_rate": 0.05}


def trade_off(boundary: float, spread: float = 0.01, calls: list | None = None):
    """A measure() whose knowledge forgetting falls linearly with beta and crosses 0.25 at `boundary`; seeds
    scatter by +-spread, harmful compliance stays at 0.01; utility falls with beta."""

    def measure(beta: float) -> Probe:
        if calls is not None:
            calls.append(beta)
        knowledge = 0.25 + 0.5 * (boundary - beta)
        return Probe(beta, {s: 1.0 - 0.3 * beta for s in SEEDS},
                     {"knowledge": {s: knowledge + spread * (s - 1) for s in SEEDS},
                      "attack_success_rate": {s: 0.01 for s in SEEDS}})  # fmt: skip

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
