"""The paper's claims on hand-made runs whose answer is known (a table without per-item scores: runs alone)."""

import math

import numpy as np

from sclora.analysis.claims import check_claims, judgement, verdict_lines
from sclora.analysis.decision import FAILS, HOLDS, UNSURE
from sclora.analysis.results import Results

SEEDS = range(5)


def runs(sclora_utility: float = 0.9, frozen_gain: float = 0.0, lr: float = 1e-3) -> Results:
    """lora, pissa and random_subspace keep knowledge 0.7 and comply 0.3; sclora keeps more as beta rises."""
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 0.01, len(SEEDS))  # what a seed does to every method alike: pairing removes it
    rows = []

    def add(method, beta, utility, knowledge, asr, rate=1e-3):
        for seed in SEEDS:
            shared = seed_effect[seed]
            rows.append({"run": f"benign-{method}-{beta}-{seed}", "task": "benign", "method": method,
                         "beta": math.nan if beta is None else beta, "seed": seed, "build": "", "lr": rate,
                         "step": math.nan, "utility": utility + shared + rng.normal(0, 0.002),
                         "knowledge": knowledge + shared + rng.normal(0, 0.005),
                         "attack_success_rate": asr + rng.normal(0, 0.005)})  # fmt: skip

    for method in ("lora", "pissa", "random_subspace"):
        add(method, None, 0.9, 0.7, 0.3)
    for beta in (0.5, 0.9):
        add("sclora", beta, sclora_utility, 0.7 + 0.2 * beta, 0.3 - 0.2 * beta, lr if beta == 0.9 else 1e-3)
        add("sclora_frozen", beta, sclora_utility, 0.7 + 0.2 * beta + frozen_gain, 0.3 - 0.2 * beta - frozen_gain)
    return Results(rows)


def test_claims_that_hold_and_one_that_cannot_be_told():
    claims = {claim["id"]: claim for claim in check_claims(runs())}
    assert claims["preserves_more"]["verdict"] == HOLDS
    assert claims["monotone_in_beta"]["verdict"] == HOLDS
    assert claims["subspace_matters"]["verdict"] == HOLDS
    assert claims["frozen_preserves_more"]["verdict"] == UNSURE  # the same numbers: no difference to see
    evidence = claims["preserves_more"]["evidence"]
    line = next(line for line in evidence if line.startswith("benign: sclora beta 0.9 vs lora:"))
    assert "knowledge +0.18" in line and "(5 seeds, runs only)" in line and line.endswith("-> holds"), line
    assert "gain shown (above 0: Holm p" in line and "estimate >= 0.02)" in line


def test_worse_utility_or_less_preservation_does_not_hold():
    claims = {claim["id"]: claim["verdict"] for claim in check_claims(runs(sclora_utility=0.6))}
    assert claims["preserves_more"] == FAILS  # preserves more, but at a clear utility loss
    claims = {claim["id"]: claim["verdict"] for claim in check_claims(runs(frozen_gain=-0.1))}
    assert claims["frozen_preserves_more"] == FAILS


def test_a_utility_difference_inside_the_margin_fails_nothing():
    # 0.01 less utility on every seed is resolved, but inside the gates' 0.02: equal or better utility holds.
    claims = {claim["id"]: claim["verdict"] for claim in check_claims(runs(sclora_utility=0.89))}
    assert claims["preserves_more"] == HOLDS


def test_a_rate_difference_is_named():
    claims = {claim["id"]: claim for claim in check_claims(runs(lr=4e-3))}
    notes = [line for line in claims["monotone_in_beta"]["evidence"] if "learning rates" in line]
    assert notes == ["benign: sclora beta 0.9 vs sclora beta 0.5 trained at learning rates 0.004 vs 0.001: the "
                     "difference is also one of learning rate"]  # fmt: skip


def test_claims_without_their_runs_are_left_out():
    table = runs()
    only = Results([r for r in table.rows if r["method"] in ("lora", "sclora")])
    assert [claim["id"] for claim in check_claims(only)] == ["preserves_more", "monotone_in_beta"]
    assert check_claims(Results([])) == []


def test_the_judgement_names_its_rule_and_reads_as_lines():
    verdicts = judgement(runs())
    assert verdicts["rule"]["utility_margin"] == 0.02 and len(verdicts["claims"]) == 4
    lines = verdict_lines(verdicts)
    assert lines[0].startswith("Decision rule (sclora/analysis/decision.py, docs/protocol.md): one-sided tests at 0.05")
    assert "- **SC-LoRA (beta >= 0.5) preserves more than LoRA and PiSSA at equal or better utility: holds**" in lines


def test_sclora_against_what_practitioners_pick_instead_each_a_claim_at_every_knob_value():
    table = runs()
    rng = np.random.default_rng(1)
    extra = [{**row, "run": f"{row['run']}-{method}", "method": method, "beta": knob,
              "knowledge": row["knowledge"] + gain + rng.normal(0, 0.005)}
             for row in table.rows if row["method"] == "lora"
             for method, knob, gain in (("astra", math.nan, 0.0), ("mix", 0.1, 0.0), ("mix", 0.5, 0.3))]  # fmt: skip
    claims = {claim["id"]: claim for claim in check_claims(Results(table.rows + extra))}
    assert claims["preserves_more_than_astra"]["verdict"] == HOLDS  # sclora keeps 0.1 and 0.18 more
    mix = claims["preserves_more_than_mix"]
    assert mix["verdict"] == FAILS  # mix at share 0.5 keeps 0.3 more than lora: more than sclora
    assert any(line.startswith("benign: sclora beta 0.9 vs mix share 0.5:") for line in mix["evidence"])
    assert "preserves_more_than_wise" not in claims  # no wise runs: left out
