"""Stage `evaluate_base`: the base model once -> artifacts/eval/base/{metrics.json, samples.jsonl}.

Every trained run is evaluated inside its own `train` item, on the exported adapter over the original base, by
the same scorer, with forgetting against these base metrics.
Why there and not in a matrix stage of its own: each stage process pays ~10 s of imports
(torch, transformers, peft, mlflow, lm-eval), as much as a whole testbed training run.
"""

from __future__ import annotations

from sclora.evaluate.scorer import SuiteScorer, score_to
from sclora.ops.config import Params, eval_settings
from sclora.runs.models import load_tokenizer
from tasks.artifacts import EVAL_BASE, load_base, staged_dir


def run(params: Params) -> dict:
    tokenizer = load_tokenizer(params.model.path, trust_remote_code=params.model.trust_remote_code)
    with staged_dir(EVAL_BASE) as staging:
        metrics = score_to(SuiteScorer(tokenizer, eval_settings(params)), load_base(params), staging)
    return {key: value for key, value in metrics.items() if isinstance(value, float)}
