"""The SC-LoRA paper's claims, checked on the comparison's runs: each "holds", "does not hold" or "inconclusive".

Every comparison is paired by seed (sclora.intervals): a difference counts only when its 95 % interval
excludes 0. Preservation is read on knowledge (higher is better) and on harmful compliance
(attack_success_rate, lower is better), on each task. "Equal or better utility" means the utility
difference's interval does not lie wholly below 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from scipy import stats

from sclora.intervals import Interval, paired_difference
from sclora.metrics import AXES, direction

# Knowledge and safety, +1 where higher preserves more.
PRESERVED = {AXES[axis]: direction(AXES[axis]) for axis in ("knowledge", "safety")}
HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"
SIGNIFICANCE = 0.05


def check_claims(rows: Sequence[Mapping]) -> list[dict]:
    """Each claim: {"id", "claim", "verdict", "evidence": [lines]}. Claims whose runs are absent are left out."""
    claims = [_preserves_more(rows), _monotone_in_beta(rows), _subspace_matters(rows), _frozen_preserves_more(rows)]
    return [claim for claim in claims if claim["evidence"]]


def _values(rows: Sequence[Mapping], task: str, method: str, beta: float | None, metric: str) -> dict[int, float]:
    return {
        int(r["seed"]): float(r[metric])
        for r in rows
        if r["task"] == task
        and r["method"] == method
        and _same_beta(r.get("beta"), beta)
        and r.get(metric) is not None
        and not math.isnan(float(r[metric]))
    }


def _same_beta(value, beta: float | None) -> bool:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return missing if beta is None else (not missing and float(value) == beta)


def _betas(rows: Sequence[Mapping], method: str = "sclora") -> list[float]:
    return sorted({float(r["beta"]) for r in rows if r["method"] == method and not _same_beta(r.get("beta"), None)})


def _tasks(rows: Sequence[Mapping]) -> list[str]:
    return sorted({r["task"] for r in rows})


def _text(d: Interval) -> str:
    return f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] over {d.n} seeds"


def _versus(rows, task, a: tuple[str, float | None], b: tuple[str, float | None]) -> tuple[str, list[str]]:
    """Does `a` preserve more than `b` at equal or better utility? One verdict over both preserved metrics."""
    utility = paired_difference(_values(rows, task, *a, "utility"), _values(rows, task, *b, "utility"))
    if utility.n < 2:
        return UNSURE, []
    verdicts, lines = [], []
    for metric, sign in PRESERVED.items():
        d = paired_difference(_values(rows, task, *a, metric), _values(rows, task, *b, metric))
        if d.n < 2:
            continue
        better = d.low > 0 if sign > 0 else d.high < 0
        worse = d.high < 0 if sign > 0 else d.low > 0
        verdicts.append(HOLDS if better and utility.high >= 0 else FAILS if worse or utility.high < 0 else UNSURE)
        lines.append(
            f"{task}: {_name(a)} - {_name(b)}: {metric} {_text(d)}; utility {_text(utility)} -> {verdicts[-1]}"
        )
    return _combine(verdicts), lines


def _name(config: tuple[str, float | None]) -> str:
    method, beta = config
    return method if beta is None else f"{method} beta {beta:g}"


def _combine(verdicts: list[str]) -> str:
    if not verdicts:
        return UNSURE
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else UNSURE


def _claim(key: str, text: str, results: list[tuple[str, list[str]]]) -> dict:
    verdicts = [verdict for verdict, lines in results if lines]
    evidence = [line for _, lines in results for line in lines]
    return {"id": key, "claim": text, "verdict": _combine(verdicts), "evidence": evidence}


def _preserves_more(rows) -> dict:
    results = [
        _versus(rows, task, ("sclora", beta), (baseline, None))
        for task in _tasks(rows)
        for beta in _betas(rows)
        if beta >= 0.5
        for baseline in ("lora", "pissa")
    ]
    return _claim(
        "preserves_more", "SC-LoRA (beta >= 0.5) preserves more than LoRA and PiSSA at equal or better utility", results
    )


def _subspace_matters(rows) -> dict:
    results = [
        _versus(rows, task, ("sclora", beta), ("random_subspace", None))
        for task in _tasks(rows)
        for beta in _betas(rows)
    ]
    return _claim(
        "subspace_matters",
        "SC-LoRA preserves more than random_subspace at equal utility (the subspace, not the magnitude)",
        results,
    )


def _frozen_preserves_more(rows) -> dict:
    results = [
        _versus(rows, task, ("sclora_frozen", beta), ("sclora", beta))
        for task in _tasks(rows)
        for beta in _betas(rows, "sclora_frozen")
    ]
    return _claim(
        "frozen_preserves_more", "The frozen basis (sclora_frozen) preserves more than the trainable one", results
    )


def _monotone_in_beta(rows) -> dict:
    """Spearman's rank correlation of beta with each metric over sclora's runs (every seed a point)."""
    verdicts, lines = [], []
    for task in _tasks(rows):
        runs = [
            r for r in rows if r["task"] == task and r["method"] == "sclora" and not _same_beta(r.get("beta"), None)
        ]
        if len({float(r["beta"]) for r in runs}) < 2 or len(runs) < 4:
            continue
        for metric, sign in (*PRESERVED.items(), ("utility", -1)):
            pairs = [
                (float(r["beta"]), float(r[metric]))
                for r in runs
                if r.get(metric) is not None and not math.isnan(float(r[metric]))
            ]
            rho, p = (
                stats.spearmanr(*zip(*pairs, strict=True)) if len({y for _, y in pairs}) > 1 else (math.nan, math.nan)
            )
            if metric == "utility":  # "falls or stays": only a significant rise contradicts it
                verdict = FAILS if rho > 0 and p < SIGNIFICANCE else HOLDS
            elif math.isnan(rho):
                verdict = UNSURE
            elif p >= SIGNIFICANCE:
                verdict = UNSURE
            else:
                verdict = HOLDS if sign * rho > 0 else FAILS
            verdicts.append(verdict)
            lines.append(
                f"{task}: {metric} vs beta: Spearman rho {rho:+.2f} (p {p:.3f}, {len(pairs)} runs) -> {verdict}"
            )
    return {
        "id": "monotone_in_beta",
        "claim": "Preservation rises with beta; utility falls or stays as beta rises",
        "verdict": _combine(verdicts),
        "evidence": lines,
    }
