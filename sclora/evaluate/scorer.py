"""The scorer interface: a model in, the metrics of the metric table (sclora.evaluate.metrics) and the per-sample
rows they were read from out.

Two implementations: `SuiteScorer`, the lm-eval suite on any model and any eval sets (sclora.evaluate.suite), and
the testbed's exact scorer (sclora.testbed.scorer), which generates once and scores by the same rules
(sclora.evaluate.scoring) at a fraction of lm-eval's cost per call. A run scores its checkpoints with either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from sclora.evaluate.suite import EvalSettings


@dataclass
class Scored:
    metrics: dict  # metric name -> value (and the suite's breakdowns: `tasks`, `<metric>_by_category`)
    samples: list[dict]  # every item: task, role, id, prompt, answer (or scored continuations), per-sample scores


class Scorer(Protocol):
    def __call__(self, model: nn.Module) -> Scored: ...


@dataclass
class SuiteScorer:
    """The lm-eval suite: every task of `settings`' roles on the model in memory."""

    tokenizer: PreTrainedTokenizerBase
    settings: EvalSettings

    def __call__(self, model: nn.Module) -> Scored:
        from sclora.evaluate.suite import evaluate

        metrics, samples = evaluate(model, self.tokenizer, self.settings)
        return Scored(metrics, samples)


def score_to(scorer: Scorer, model: nn.Module, out_dir: str | Path, base_metrics: str | Path | None = None) -> dict:
    """`scorer` on `model`, with forgetting against `base_metrics` (a metrics.json) when given; metrics.json and
    samples.jsonl written into `out_dir` (each atomically). Returns the metrics."""
    from sclora.evaluate.forgetting import with_forgetting
    from sclora.evaluate.suite import write_results

    scored = scorer(model)
    metrics = scored.metrics if base_metrics is None else with_forgetting(scored.metrics, base_metrics)
    write_results(out_dir, metrics, scored.samples)
    return metrics
