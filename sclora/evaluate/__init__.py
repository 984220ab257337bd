"""Evaluation: utility, world knowledge, safety and forgetting.

`metrics` is the metric table (what feeds each metric, where it is shown); `scorer` the interface a run is scored
through. `suite` runs lm-eval tasks (the YAMLs in `lm_eval_tasks/` and lm-eval's own) on a model in memory;
`scoring` decides refusal and exact match; `generation` gives batched greedy answers; `judge` adds the optional 1-5
harmfulness judge; `forgetting` compares a fine-tuned evaluation with the base model's; `items` reads per-item
scores back; `task_loss` is the task's held-out loss.
"""

from sclora.evaluate.forgetting import ForgettingError, forgetting, load_metrics, with_forgetting
from sclora.evaluate.judge import JudgeError, JudgeSettings, harmfulness, judge_scores
from sclora.evaluate.suite import (
    LM_EVAL_TASKS_DIR,
    EvalError,
    EvalSettings,
    evaluate,
    write_results,
)

__all__ = [
    "LM_EVAL_TASKS_DIR",
    "EvalError",
    "EvalSettings",
    "ForgettingError",
    "JudgeError",
    "JudgeSettings",
    "evaluate",
    "forgetting",
    "harmfulness",
    "judge_scores",
    "load_metrics",
    "with_forgetting",
    "write_results",
]
