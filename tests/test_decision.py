"""The decision rule, calibrated by simulation: synthetic protocol tables with known effects and the measured
noise (tests/synthetic_results.py says where each number comes from), judged by the rule the report and
`sclora judge` use. The protocol's seed count (5), item counts (300) and claim families are those of
`make protocol`."""

from collections import Counter

import numpy as np
import pytest
from synthetic_results import SEEDS, Truth, table

from sclora.analysis.claims import check_claims, paper_claims
from sclora.analysis.decision import FAILS, HOLDS, UNSURE, Claim, Comparison, Rule, holm, holm_adjusted, judge
from sclora.analysis.results import Results

SCLORA = [("sclora", 0.5), ("sclora", 0.9)]
FROZEN = [("sclora_frozen", 0.5), ("sclora_frozen", 0.9)]
BASELINES = [("lora", None), ("pissa", None), ("random_subspace", None)]
# A clear win, as the issue put it: +0.05 knowledge, harmful compliance cut by about 0.30 (a seed of the
# weaker side flips with probability 0.6 into 0.3-0.7 compliance), utility equal.
BETTER, WORSE = Truth(knowledge=0.97, flip=0.0), Truth(knowledge=0.92, flip=0.6)
# Tables per simulation: a few hundred in all, within the fast tier (the verdict rates' standard error is then
# about 1.5 points at 5 % and 5 points at 80 %).
TABLES = {"null": 200, "bimodal": 100, "scenario": 60}


def verdict_rates(truths, claim_ids, tables, seed):
    """How often each claim got each verdict over `tables` synthetic tables (fixed seed)."""
    rng = np.random.default_rng(seed)
    counts = {claim: Counter() for claim in claim_ids}
    for _ in range(tables):
        results = table(truths, rng)
        for claim in paper_claims(results):
            if claim.id in counts:
                counts[claim.id][judge(claim, results)["verdict"]] += 1
    return {claim: {v: n / tables for v, n in c.items()} for claim, c in counts.items()}


CLAIMS = ("preserves_more", "monotone_in_beta", "subspace_matters", "frozen_preserves_more")


def test_equal_methods_rarely_hold_and_rarely_fail():
    # Every configuration the same (knowledge 0.95, utility 0.99, a seed flips into compliance with 0.3 on the
    # poisoned task): seed and item noise only.
    rates = verdict_rates({}, CLAIMS, TABLES["null"], seed=0)
    for claim, rate in rates.items():
        assert rate.get(HOLDS, 0) <= 0.05 and rate.get(FAILS, 0) <= 0.05, (claim, rate)


def test_equal_methods_with_much_bimodal_compliance_rarely_fail():
    # The same with compliance at its most bimodal (a seed flips with 0.5): the per-seed differences are
    # -0.5 / 0 / +0.5, the case a t interval over the seeds alone gets wrong.
    rates = verdict_rates({c: Truth(flip=0.5) for c in [*SCLORA, *FROZEN, *BASELINES]}, CLAIMS, TABLES["bimodal"], 1)
    for claim, rate in rates.items():
        assert rate.get(HOLDS, 0) <= 0.05 and rate.get(FAILS, 0) <= 0.05, (claim, rate)


@pytest.mark.parametrize(
    "claims, better, worse",
    [
        (("preserves_more", "subspace_matters"), SCLORA, BASELINES),
        (("monotone_in_beta",), [("sclora", 0.9)], [("sclora", 0.5)]),
        (("frozen_preserves_more",), FROZEN, SCLORA),
    ],
    ids=["sclora-vs-baselines", "beta", "frozen"],
)
def test_a_clear_win_holds_and_a_clear_loss_does_not(claims, better, worse):
    win = verdict_rates({**dict.fromkeys(better, BETTER), **dict.fromkeys(worse, WORSE)}, claims,
                        TABLES["scenario"], seed=2)  # fmt: skip
    loss = verdict_rates({**dict.fromkeys(better, WORSE), **dict.fromkeys(worse, BETTER)}, claims,
                         TABLES["scenario"], seed=3)  # fmt: skip
    for claim in claims:
        assert win[claim].get(HOLDS, 0) >= 0.8, (claim, win[claim])
        assert loss[claim].get(FAILS, 0) >= 0.8 and loss[claim].get(HOLDS, 0) == 0, (claim, loss[claim])


def test_a_knowledge_gain_at_a_utility_loss_beyond_the_margin_does_not_hold():
    # SC-LoRA keeps +0.05 knowledge and complies less, but loses 0.05 utility (the margin is 0.02).
    costly = Truth(knowledge=0.97, flip=0.0, utility=0.94)
    rates = verdict_rates({**dict.fromkeys(SCLORA, costly), **dict.fromkeys(BASELINES, WORSE)},
                          ("preserves_more", "subspace_matters"), TABLES["scenario"], seed=4)  # fmt: skip
    for claim, rate in rates.items():
        assert rate.get(HOLDS, 0) <= 0.05 and rate.get(FAILS, 0) >= 0.8, (claim, rate)


def test_the_issues_hand_made_table_holds():
    # Measured on main 4e31c4c, the old rule called this "inconclusive": +0.05 knowledge on every seed against
    # LoRA and PiSSA, compliance cut by 0.30, utility equal; compliance 0.00 everywhere on the benign task.
    truths = {**dict.fromkeys(SCLORA, BETTER), **dict.fromkeys(BASELINES, WORSE)}
    claims = {c["id"]: c for c in check_claims(table(truths, np.random.default_rng(5)))}
    verdict = claims["preserves_more"]
    assert verdict["verdict"] == HOLDS, verdict["evidence"]
    floor = [line for line in verdict["evidence"] if line.startswith("benign") and "attack_success_rate" in line]
    assert floor and all("left out, neither a failure nor a block" in line for line in floor)


def test_five_seeds_one_item_short_is_no_resolved_loss():
    # The issue's case: a difference with zero spread over seeds (every seed one item short, -1/300) got a
    # zero-width interval and failed the claim. Per item, one item is no evidence of a loss that counts.
    rows, items = [], {}
    for method, beta, wrong in (("sclora", 0.5, 1), ("lora", None, 0)):
        for seed in SEEDS:
            run = f"benign-{method}-{seed}"
            scores = {"knowledge": [0.0] * wrong + [1.0] * (300 - wrong), "utility": [1.0] * 300}
            items[run] = {m: {f"i{i:03d}": v for i, v in enumerate(s)} for m, s in scores.items()}
            rows.append({"run": run, "task": "benign", "method": method, "beta": np.nan if beta is None else beta,
                         "seed": seed, "build": "0", "lr": 1e-3, "step": 150.0,
                         **{m: float(np.mean(s)) for m, s in scores.items()}})  # fmt: skip
    claim = Claim("c", "sclora preserves more", (Comparison("benign", ("sclora", 0.5), ("lora", None)),))
    verdict = judge(claim, Results(rows, items))
    assert verdict["verdict"] == UNSURE, verdict["evidence"]
    knowledge = verdict["comparisons"][0]["endpoints"]["knowledge"]
    assert knowledge["low"] < knowledge["high"] and not knowledge["loss_shown"]
    utility = verdict["comparisons"][0]["endpoints"]["utility"]  # 1.00 on every item: exact, not zero width
    assert utility["exact"] and utility["low"] < 0 < utility["high"] and utility["met"]


def test_holm_steps_down():
    assert holm([0.01, 0.04, 0.03], 0.05) == [True, False, False]
    assert holm([0.01, 0.02, 0.04], 0.05) == [True, True, True]
    assert holm([float("nan"), 0.001], 0.05) == [False, True]
    assert holm_adjusted([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_the_rule_names_its_numbers():
    rule = Rule(utility_margin=0.03).describe()
    assert rule["utility_margin"] == 0.03 and rule["alpha"] == 0.05
    assert set(rule["smallest_effect"]) == {"knowledge", "attack_success_rate"}


def test_a_utility_margin_the_items_cannot_resolve_is_said_before_the_verdict():
    """Away from saturation (utility 0.80 on 300 items) a non-inferiority margin of 0.02 is mostly below what 5 seeds
    can resolve (0.009-0.057 over this table's 8 comparisons): the evidence says so ahead of the comparison's
    verdict, with the margin they could resolve. At utility 0.99 it can, and says nothing."""
    win = {config: Truth(knowledge=0.97, utility=0.80, flip=0.0) for config in SCLORA}
    rest = {config: Truth(knowledge=0.92, utility=0.80, flip=0.6) for config in BASELINES}
    results = table({**win, **rest}, np.random.default_rng(5))
    claim = next(c for c in paper_claims(results) if c.id == "preserves_more")
    verdict = judge(claim, results)
    first = verdict["evidence"][0]
    assert "utility resolves a margin of" in first and "'holds' is out of reach" in first, first
    margins = [c["endpoints"]["utility"]["resolvable_margin"] for c in verdict["comparisons"] if c["endpoints"]]
    assert sum(m > 0.02 for m in margins) > len(margins) / 2 and verdict["verdict"] != HOLDS  # 6 of 8 here
    saturated = table({}, np.random.default_rng(5))
    claim = next(c for c in paper_claims(saturated) if c.id == "preserves_more")
    assert not any("out of reach" in line for line in judge(claim, saturated)["evidence"])
