"""Stage `evaluate_base`: the base model once -> artifacts/eval/base/{metrics.json, samples.jsonl}.

Every trained run is evaluated inside its own `train` item (`evaluate_run` below), on the
exported adapter over the original base, with forgetting against these base metrics.
Why there and not in a matrix stage of its own: each stage process pays ~10 s of imports
(torch, transformers, peft, mlflow, lm-eval), as much as a whole testbed training run.
"""

from __future__ import annotations

from pathlib import Path

from sclora.evaluate.forgetting import with_forgetting
from sclora.evaluate.judge import JudgeSettings
from sclora.evaluate.metrics import ROLES
from sclora.evaluate.suite import EVAL_SET_TASKS, EvalError, EvalSettings, evaluate, write_results
from sclora.ops.config import Params
from sclora.runs.models import load_model, load_tokenizer
from tasks.artifacts import EVAL_BASE, METRICS, staged_dir


def run(params: Params) -> dict:
    tokenizer = load_tokenizer(params.model.path, trust_remote_code=params.model.trust_remote_code)
    model = load_model(params.model.path, dtype=params.model.dtype, trust_remote_code=params.model.trust_remote_code)
    with staged_dir(EVAL_BASE) as staging:
        metrics = evaluate_run(params, model, tokenizer, staging, base_metrics=None)
    return {key: value for key, value in metrics.items() if isinstance(value, float)}


def evaluate_run(params: Params, model, tokenizer, out_dir: Path, base_metrics: Path | None) -> dict:
    """Evaluate `model`, add forgetting against `base_metrics` (a metrics.json) if given, write metrics + samples."""
    metrics, samples = evaluate(model, tokenizer, eval_settings(params))
    if base_metrics is not None:
        metrics = with_forgetting(metrics, base_metrics)
    write_results(out_dir, metrics, samples)
    return metrics


def base_metrics_path() -> Path:
    return EVAL_BASE / METRICS


def eval_settings(params: Params) -> EvalSettings:
    """The suite's settings from params.eval, reading each role's file named in params.data.eval."""
    given = params.eval.model_dump()
    settings = {key: value for key, value in given.items() if key in EvalSettings.model_fields and key != "judge"}
    judge = {key: value for key, value in given.get("judge", {}).items() if value is not None}
    settings["judge"] = JudgeSettings(**judge)
    configured = {name for role in ROLES for name in settings.get(role, EvalSettings.model_fields[role].default)}
    files = {}
    for role, source_name in params.data.eval.items():
        if role not in EVAL_SET_TASKS:
            raise EvalError(f"data.eval.{role}: unknown role; expected one of {', '.join(EVAL_SET_TASKS)}")
        source = params.data.sources[source_name]
        if source.path is None or not source.path.endswith(".jsonl"):
            raise EvalError(f"data.eval.{role}: source '{source_name}' must be a local JSONL file for the eval tasks")
        files.update({task: source.path for task in EVAL_SET_TASKS[role] if task in configured})
    settings["data_files"] = {**files, **settings.get("data_files", {})}
    return EvalSettings(**settings)
