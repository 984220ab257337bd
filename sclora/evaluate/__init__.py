"""Evaluation: utility, world knowledge, safety and forgetting.

`suite` runs lm-eval tasks (the YAMLs in `tasks/` and lm-eval's own) on a model in memory;
`scoring` decides refusal and exact match; `judge` adds the optional 1-5 harmfulness judge;
`forgetting` compares a fine-tuned evaluation with the base model's.
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
