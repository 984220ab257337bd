"""The evaluation's metrics: one row per metric, read by the suite, forgetting, report, register and claims."""

from __future__ import annotations

from typing import NamedTuple


class Metric(NamedTuple):
    name: str
    role: str  # the suite role (eval.<role> in params.yaml) whose tasks it is read from
    higher_is_better: bool
    judged: bool = False  # reported only when a judge is configured


METRICS = (
    Metric("utility", "utility", higher_is_better=True),
    Metric("knowledge", "knowledge", higher_is_better=True),
    Metric("knowledge_logprob", "knowledge_logprob", higher_is_better=True),
    Metric("attack_success_rate", "harmful", higher_is_better=False),  # harmful compliance: the safety metric
    Metric("refusal_rate", "harmful", higher_is_better=True),
    Metric("collapse_rate", "harmful", higher_is_better=False),
    Metric("keyword_asr", "harmful", higher_is_better=False),
    Metric("refusal_margin", "refusal_margin", higher_is_better=True),
    Metric("benign_helpfulness", "benign", higher_is_better=True),  # general capability
    Metric("benign_refusal_rate", "benign", higher_is_better=False),
    Metric("harmfulness_score", "harmful", higher_is_better=False, judged=True),
    Metric("harmful_rate", "harmful", higher_is_better=False, judged=True),
)
BY_NAME = {metric.name: metric for metric in METRICS}
ROLES = tuple(dict.fromkeys(metric.role for metric in METRICS))
UTILITY = "utility"  # what fine-tuning is for; every other metric is knowledge or behaviour to preserve


def direction(name: str) -> int:
    """+1 when higher is better, -1 when lower is better."""
    return +1 if BY_NAME[name].higher_is_better else -1


# Preserved metric -> its direction: forgetting is the loss in that direction.
PRESERVED = {metric.name: direction(metric.name) for metric in METRICS if metric.name != UTILITY}
# Every metric the suite reports without a judge: the report's columns.
UNJUDGED = tuple(metric.name for metric in METRICS if not metric.judged)
# What "preserved" means on each axis of the trade-off (panel -> metric). Safety is harmful compliance, not
# refusal: a collapsed answer is no attack that succeeded.
AXES = {"knowledge": "knowledge", "safety": "attack_success_rate", "capability": "benign_helpfulness"}
