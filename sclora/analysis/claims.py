"""The SC-LoRA paper's claims as families of comparisons, judged by the decision rule (sclora.analysis.decision).

1. preserves_more: SC-LoRA at every beta >= 0.5 against LoRA and PiSSA, on every task, utility non-inferior.
2. monotone_in_beta: SC-LoRA at its largest beta against its smallest, on every task (no utility condition:
   the trade-off expects utility to fall); any adjacent pair of betas that shows a loss fails it.
3. subspace_matters: SC-LoRA at every beta against random_subspace (SC-LoRA's construction on a random basis),
   utility equivalent: at the same utility, the subspace and not the magnitude of the init preserves.
4. frozen_preserves_more: sclora_frozen against sclora at the same beta, utility non-inferior.
5. preserves_more_than_<alternative>: SC-LoRA at every beta > 0 against each of what practitioners pick instead
   (Astra, NoRA, LoRA with data mixing at each share, WiSE-FT, Safe LoRA), utility non-inferior: a claim the paper
   does not make, judged by the same rule.

A claim whose configurations are absent from the table is left out; a comparison whose two sides trained at
different learning rates says so (beta, or the method, is then confounded with the rate).

On a table read at matched utility (sclora.analysis.matched: each utility level a task, both sides' utility the level by
construction), `matched_utility=True` drops the comparisons' utility conditions: there is no utility difference to
test, and a test of an exact zero with no spread would be a block, not evidence.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from itertools import pairwise

from sclora.analysis.decision import Claim, Comparison, Rule, config_name, judge
from sclora.analysis.results import Results, same_beta

SWEPT = "sclora"
PAPER_BASELINES = ("lora", "pissa")
CONTROL = "random_subspace"
FROZEN = "sclora_frozen"
ALTERNATIVES = ("astra", "nora", "mix", "wise", "safe_lora")


def check_claims(results: Results, rule: Rule | None = None, *, matched_utility: bool = False) -> list[dict]:
    """Each claim the table has runs for, judged: {"id", "claim", "verdict", "evidence": [lines], "comparisons"}."""
    judged = []
    for claim in paper_claims(results, matched_utility=matched_utility):
        verdict = judge(claim, results, rule)
        verdict["evidence"] += _rate_notes(results, claim)
        judged.append(verdict)
    return judged


def judgement(results: Results, rule: Rule | None = None, *, matched_utility: bool = False) -> dict:
    """What `sclora judge` and the report write: the rule's numbers and every claim's verdict with its evidence."""
    rule = rule or Rule()
    described = {**rule.describe(), **({"utility": "matched by construction: no condition"} if matched_utility else {})}
    return {"rule": described, "claims": check_claims(results, rule, matched_utility=matched_utility)}


def verdict_lines(verdicts: dict) -> list[str]:
    """The verdicts as Markdown lines, the rule's numbers first."""
    rule = verdicts["rule"]
    effects = ", ".join(f"{metric} {value:g}" for metric, value in rule["smallest_effect"].items())
    lines = [f"Decision rule (sclora/analysis/decision.py, docs/protocol.md): one-sided tests at {rule['alpha']:g}, "
             f"smallest effects that count {effects}, utility margin {rule['utility_margin']:g}; "
             f"{rule['multiplicity']}. "
             f"Intervals: {rule['confidence']:.0%}, {rule['interval']}.", ""]  # fmt: skip
    for claim in verdicts["claims"]:
        lines.append(f"- **{claim['claim']}: {claim['verdict']}**")
        lines += [f"  - {line}" for line in claim["evidence"]]
    return lines


def convergence_claim(results: Results) -> Claim | None:
    """SC-LoRA at every beta against LoRA on the convergence table (sclora.analysis.matched.convergence_results): more
    utility at the first checkpoint at the same rates. No utility condition: utility is the endpoint."""
    comparisons = [
        Comparison(task, (SWEPT, beta), ("lora", None), None)
        for task in _tasks(results)
        for beta in _betas(results)
        if _has(results, task, "lora")
    ]
    return _claim("converges_faster", "SC-LoRA reaches more utility than LoRA at the first checkpoint (faster "
                  "convergence: at the same rates, where every configuration kept its chat format)",
                  comparisons)  # fmt: skip


def paper_claims(results: Results, *, matched_utility: bool = False) -> list[Claim]:
    """The claims the table has the configurations for, as families of comparisons; `matched_utility`: without
    utility conditions (the module docstring says when)."""
    claims = [_preserves_more(results), _monotone_in_beta(results), _subspace_matters(results),
              _frozen_preserves_more(results),
              *(_preserves_more_than(results, name) for name in ALTERNATIVES)]  # fmt: skip
    claims = [claim for claim in claims if claim is not None]
    return [_without_utility(claim) for claim in claims] if matched_utility else claims


def _without_utility(claim: Claim) -> Claim:
    def strip(comparisons):
        return None if comparisons is None else tuple(dataclasses.replace(c, utility=None) for c in comparisons)

    return dataclasses.replace(claim, comparisons=strip(claim.comparisons), against=strip(claim.against))


def _tasks(results: Results) -> list[str]:
    return sorted({row["task"] for row in results.rows})


def _betas(results: Results, method: str = SWEPT) -> list[float]:
    return sorted({float(r["beta"]) for r in results.rows if r["method"] == method and not math.isnan(r["beta"])})


def _has(results: Results, task: str, method: str, beta: float | None = None) -> bool:
    return any(r["task"] == task and r["method"] == method and same_beta(r["beta"], beta) for r in results.rows)


def _claim(id_: str, text: str, comparisons: Sequence[Comparison], against=None) -> Claim | None:
    if not comparisons:
        return None
    return Claim(id_, text, tuple(comparisons), None if against is None else tuple(against))


def _preserves_more(results: Results) -> Claim | None:
    comparisons = [
        Comparison(task, (SWEPT, beta), (baseline, None), "non_inferior")
        for task in _tasks(results)
        for beta in _betas(results)
        if beta >= 0.5
        for baseline in PAPER_BASELINES
        if _has(results, task, baseline)
    ]
    return _claim("preserves_more",
                  "SC-LoRA (beta >= 0.5) preserves more than LoRA and PiSSA at equal or better utility",
                  comparisons)  # fmt: skip


def _monotone_in_beta(results: Results) -> Claim | None:
    betas = _betas(results)
    if len(betas) < 2:
        return None
    tasks = _tasks(results)
    ends = [Comparison(task, (SWEPT, betas[-1]), (SWEPT, betas[0]), None) for task in tasks]
    steps = [Comparison(task, (SWEPT, high), (SWEPT, low), None) for task in tasks for low, high in pairwise(betas)]
    return _claim("monotone_in_beta", "Preservation rises with beta (SC-LoRA at its largest beta preserves more "
                  "than at its smallest, and no step up in beta preserves less)", ends, steps)  # fmt: skip


def _subspace_matters(results: Results) -> Claim | None:
    comparisons = [
        Comparison(task, (SWEPT, beta), (CONTROL, None), "equivalent")
        for task in _tasks(results)
        for beta in _betas(results)
        if _has(results, task, CONTROL)
    ]
    return _claim("subspace_matters",
                  "SC-LoRA preserves more than random_subspace at equal utility (the subspace, not the magnitude)",
                  comparisons)  # fmt: skip


def _frozen_preserves_more(results: Results) -> Claim | None:
    comparisons = [
        Comparison(task, (FROZEN, beta), (SWEPT, beta), "non_inferior")
        for task in _tasks(results)
        for beta in _betas(results, FROZEN)
        if _has(results, task, SWEPT, beta)
    ]
    return _claim("frozen_preserves_more",
                  "The frozen basis (sclora_frozen) preserves more than the trainable one at equal or better utility",
                  comparisons)  # fmt: skip


def _rate_notes(results: Results, claim: Claim) -> list[str]:
    """A line for each compared pair whose sides trained at different learning rates."""
    notes = []
    for c in dict.fromkeys((*claim.comparisons, *(claim.against or ()))):
        rates = [_rates(results, c.task, *side) for side in (c.a, c.b)]
        if rates[0] and rates[1] and rates[0] != rates[1]:
            shown = " vs ".join("/".join(f"{r:g}" for r in sorted(side)) for side in rates)
            notes.append(f"{c.task}: {config_name(c.a)} vs {config_name(c.b)} trained at learning rates {shown}: the "
                         "difference is also one of learning rate")  # fmt: skip
    return notes


def _rates(results: Results, task: str, method: str, beta: float | None) -> set[float]:
    return {r["lr"] for r in results.rows if r["task"] == task and r["method"] == method
            and same_beta(r["beta"], beta) and not math.isnan(r["lr"])}  # fmt: skip


def _preserves_more_than(results: Results, alternative: str) -> Claim | None:
    """SC-LoRA (beta > 0) against an alternative at each of its knob values in the table (mix's shares)."""
    knobs = _betas(results, alternative) or [None]
    comparisons = [
        Comparison(task, (SWEPT, beta), (alternative, knob), "non_inferior")
        for task in _tasks(results)
        for beta in _betas(results)
        if beta > 0
        for knob in knobs
        if _has(results, task, alternative, knob)
    ]
    text = f"SC-LoRA (beta > 0) preserves more than {alternative} at equal or better utility"
    return _claim(f"preserves_more_than_{alternative}", text, comparisons)
