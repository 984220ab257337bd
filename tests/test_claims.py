"""The paper's claims on hand-made runs whose answer is known."""

import numpy as np

from sclora.claims import FAILS, HOLDS, UNSURE, check_claims

SEEDS = range(5)


def runs(sclora_utility: float = 0.9, frozen_gain: float = 0.0) -> list[dict]:
    """lora, pissa and random_subspace keep knowledge 0.7 and comply 0.3; sclora keeps more as beta rises."""
    rng = np.random.default_rng(0)
    rows = []

    def add(method, beta, utility, knowledge, asr):
        for seed in SEEDS:
            shared = rng.normal(0, 0.01)  # what a seed does to every method alike: pairing removes it
            rows.append(
                {
                    "task": "benign",
                    "method": method,
                    "beta": beta,
                    "seed": seed,
                    "utility": utility + shared,
                    "knowledge": knowledge + shared + rng.normal(0, 0.005),
                    "attack_success_rate": asr + rng.normal(0, 0.005),
                }
            )

    for method in ("lora", "pissa", "random_subspace"):
        add(method, None, 0.9, 0.7, 0.3)
    for beta in (0.5, 0.9):
        add("sclora", beta, sclora_utility, 0.7 + 0.2 * beta, 0.3 - 0.2 * beta)
        add("sclora_frozen", beta, sclora_utility, 0.7 + 0.2 * beta + frozen_gain, 0.3 - 0.2 * beta - frozen_gain)
    return rows


def test_claims_that_hold_and_one_that_cannot_be_told():
    claims = {claim["id"]: claim for claim in check_claims(runs())}
    assert claims["preserves_more"]["verdict"] == HOLDS
    assert claims["monotone_in_beta"]["verdict"] == HOLDS
    assert claims["subspace_matters"]["verdict"] == HOLDS
    assert claims["frozen_preserves_more"]["verdict"] == UNSURE  # the same numbers: no difference to see
    evidence = claims["preserves_more"]["evidence"]
    assert any(line.startswith("benign: sclora beta 0.9 - lora: knowledge +0.18") for line in evidence), evidence


def test_worse_utility_or_less_preservation_does_not_hold():
    claims = {claim["id"]: claim["verdict"] for claim in check_claims(runs(sclora_utility=0.6))}
    assert claims["preserves_more"] == FAILS  # preserves more, but at a clear utility loss
    claims = {claim["id"]: claim["verdict"] for claim in check_claims(runs(frozen_gain=-0.1))}
    assert claims["frozen_preserves_more"] == FAILS


def test_claims_without_their_runs_are_left_out():
    rows = [r for r in runs() if r["method"] in ("lora", "sclora")]
    assert [claim["id"] for claim in check_claims(rows)] == ["preserves_more", "monotone_in_beta"]
    assert check_claims([]) == []
