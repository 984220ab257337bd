"""The evaluation's metrics: one row per metric, everything the project needs to know about it.

A row says what feeds the metric (the suite role whose tasks are read, and the per-sample score averaged over
their items) and where it is shown. Every list of metrics elsewhere (the suite's reading of lm-eval's output,
the per-item scores, the report's paired table, a tuning curve, a frontier point, the testbed check's table, the
testbed's exact scorer) is derived from these rows: adding a metric is its row, and the scorer that computes it.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

# Where a metric appears. paired: the quick run's table paired against LoRA; curve: a learning-rate curve (tuning,
# the testbed check's table); front: a frontier point; items: per-item scores kept for the intervals.
Shown = Literal["paired", "curve", "front", "items"]
ALL: frozenset[Shown] = frozenset(("paired", "curve", "front", "items"))


class Metric(NamedTuple):
    name: str
    role: str  # the suite role (eval.<role> in params.yaml) whose tasks feed it
    higher_is_better: bool
    # The per-sample score of the role's tasks that it averages (lm-eval's metric key, e.g. "refusal"); None: the
    # role's own score, whatever its task reports first (exact match, ROUGE-1, ...).
    score: str | None
    # The role's headline: the score a role's task must report (the others are read when present).
    primary: bool
    shown: frozenset[Shown] = frozenset()
    share: bool = True  # a share of items in [0, 1] (a log-probability or a margin is not)
    judged: bool = False  # reported only when a judge is configured
    complement_of: str | None = None  # 1 - that metric (keyword_asr = 1 - refusal_rate), not read from samples


# One metric a row, its fields by name (formatting off: ruff would spread each row over several lines).
# fmt: off
METRICS = (
    Metric("utility", "utility", higher_is_better=True, score=None, primary=True, shown=ALL),
    Metric("knowledge", "knowledge", higher_is_better=True, score=None, primary=True, shown=ALL),
    Metric("knowledge_logprob", "knowledge_logprob", higher_is_better=True, score="logprob", primary=True,
           shown=frozenset(("paired", "front")), share=False),
    # Against distractors: the gold answer the most likely of the choices (tasks that offer choices).
    Metric("knowledge_choice", "knowledge_logprob", higher_is_better=True, score="choice", primary=False,
           shown=ALL),
    # Harmful compliance: the safety metric.
    Metric("attack_success_rate", "harmful", higher_is_better=False, score="compliance", primary=False, shown=ALL),
    Metric("refusal_rate", "harmful", higher_is_better=True, score="refusal", primary=True, shown=ALL),
    Metric("collapse_rate", "harmful", higher_is_better=False, score="collapse", primary=False, shown=ALL),
    Metric("keyword_asr", "harmful", higher_is_better=False, score=None, primary=False,
           complement_of="refusal_rate"),
    Metric("refusal_margin", "refusal_margin", higher_is_better=True, score="refusal_margin", primary=True,
           shown=frozenset(("paired", "front")), share=False),
    # General capability.
    Metric("benign_helpfulness", "benign", higher_is_better=True, score="helpful", primary=False, shown=ALL),
    Metric("benign_refusal_rate", "benign", higher_is_better=False, score="refusal", primary=True,
           shown=frozenset(("front",))),
    # General capability as PEFT's method comparison measures forgetting: the cross-entropy of held-out general text,
    # here per byte (comparable across tokenizers), against the untouched base model (not the adapter disabled).
    Metric("general_nll", "general", higher_is_better=False, score="nll", primary=True,
           shown=frozenset(("paired", "front")), share=False),
    Metric("harmfulness_score", "harmful", higher_is_better=False, score="harmfulness", primary=False,
           share=False, judged=True),
    Metric("harmful_rate", "harmful", higher_is_better=False, score="harmfulness", primary=False, judged=True),
)
# fmt: on
BY_NAME = {metric.name: metric for metric in METRICS}
ROLES = tuple(dict.fromkeys(metric.role for metric in METRICS))
UTILITY = "utility"  # what fine-tuning is for; every other metric is knowledge or behaviour to preserve


def shown_in(place: Shown) -> tuple[str, ...]:
    """The metrics shown in `place`, in the table's order."""
    return tuple(metric.name for metric in METRICS if place in metric.shown)


def direction(name: str) -> int:
    """+1 when higher is better, -1 when lower is better."""
    return +1 if BY_NAME[name].higher_is_better else -1


# The score that heads each role (what the suite requires its tasks to report, when it names one) and its metric.
PRIMARY = {metric.role: metric for metric in METRICS if metric.primary}
# Per role, the further per-sample scores its tasks may report, and the metric each becomes.
EXTRA = {
    role: {m.score: m.name for m in METRICS if m.role == role and not m.primary and m.score and not m.judged}
    for role in ROLES
}
# Preserved metric -> its direction: forgetting is the loss in that direction.
PRESERVED = {metric.name: direction(metric.name) for metric in METRICS if metric.name != UTILITY}
# Every metric the suite reports without a judge: the report's columns.
UNJUDGED = tuple(metric.name for metric in METRICS if not metric.judged)
# What "preserved" means on each axis of the trade-off (panel -> metric). Safety is harmful compliance, not
# refusal: a collapsed answer is no attack that succeeded.
AXES = {"knowledge": "knowledge", "safety": "attack_success_rate", "capability": "benign_helpfulness"}
