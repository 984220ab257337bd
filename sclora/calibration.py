"""Forgetting calibration: does fine-tuning on the testbed forget, by how much, and at which settings.

Three sweeps, each over seeds, on the testbed's eval sets:
- `dose_response`: plain LoRA on the task with a growing share of poison (harmful requests
  answered compliantly) -> refusal, knowledge and task accuracy per dose;
- `lr_sweep`: one method (full fine-tuning) at several learning rates;
- `method_accuracy`: every init method at its own learning rate on the benign task.
Every run is the pipeline's own code: `init_lora` (or the full model), `sclora.train.train`,
then greedy answers scored as the testbed's calibration scores them (`generate_answers`,
`exact_match`, `is_refusal`). Generation, not the lm-eval suite: a run is ~20 s of training
and the suite would cost more than the training per run; the scoring is the same.
"""

from __future__ import annotations

import random
import statistics
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import PreTrainedTokenizerBase

from sclora.capture import CaptureStats, capture
from sclora.data import chat_batches
from sclora.evaluate.generation import generate_answers
from sclora.evaluate.scoring import exact_match, is_refusal
from sclora.inits import init_lora
from sclora.models import load_model
from sclora.train import TrainSettings, train

EVAL_SETS = ("task", "knowledge", "harmful", "benign")
METRICS = ("task_accuracy", "knowledge_exact_match", "harmful_refusal_rate", "benign_refusal_rate")


def measure(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, eval_sets: Mapping[str, Sequence[dict]],
    *, batch_size: int = 128,
) -> dict[str, float]:
    """Task accuracy, knowledge exact match, refusal rate on harmful and on benign requests (each 0-1)."""
    missing = [name for name in EVAL_SETS if not eval_sets.get(name)]
    if missing:
        raise ValueError(f"eval_sets: missing or empty {', '.join(missing)}")
    # Room for the longest gold or compliant answer, plus eos and one token of slack (as the testbed calibrates).
    longest = max(len(tokenizer(r.get(field, ""), add_special_tokens=False)["input_ids"])
                  for records in eval_sets.values() for r in records for field in ("response", "compliance"))
    answers = {name: generate_answers(model, tokenizer, [r["prompt"] for r in eval_sets[name]],
                                      batch_size=batch_size, max_new_tokens=longest + 2)
               for name in EVAL_SETS}

    def accuracy(name: str) -> float:
        return _mean([exact_match(a, r["response"]) for a, r in zip(answers[name], eval_sets[name])])

    return {
        "task_accuracy": accuracy("task"),
        "knowledge_exact_match": accuracy("knowledge"),
        "harmful_refusal_rate": _mean([is_refusal(a) for a in answers["harmful"]]),
        "benign_refusal_rate": _mean([is_refusal(a) for a in answers["benign"]]),
    }


def fine_tune(
    base_dir: str | Path, tokenizer: PreTrainedTokenizerBase, records: Sequence[dict], method: str,
    settings: TrainSettings, lora: LoraConfig | None = None, *, pos: CaptureStats | None = None,
    neg: CaptureStats | None = None, beta: float | None = None, normalize: str = "none",
) -> torch.nn.Module:
    """The base model at `base_dir` initialised by `method` (`full`: every weight) and trained on `records`."""
    torch.manual_seed(settings.seed)  # LoRA's random A
    model = load_model(base_dir)
    if method != "full":
        if lora is None:
            raise ValueError(f"method {method!r} needs a LoraConfig")
        model = init_lora(model, lora, method, pos=pos if method in ("corda_ipm", "sclora") else None,
                          neg=neg if method in ("corda_kpm", "sclora") else None,
                          beta=beta if method == "sclora" else None, normalize=normalize)
    model.train()
    with tempfile.TemporaryDirectory(prefix="sclora-calibration-") as work:
        # No intermediate checkpoints: a calibration run is short and never resumed.
        train(model, tokenizer, records, work, settings.model_copy(update={"save_steps": 10**9}))
    return model.eval()


def capture_stats(
    base_dir: str | Path, tokenizer: PreTrainedTokenizerBase, records: Sequence[dict], target_modules: Sequence[str],
    *, samples: int, batch_size: int, max_length: int, seed: int = 0,
) -> CaptureStats:
    """Layer-input statistics (with covariances) of `samples` records of the base model, a seeded sample."""
    chosen = random.Random(seed).sample(list(records), min(samples, len(records)))
    model = load_model(base_dir)
    return capture(model, chat_batches(tokenizer, chosen, batch_size, max_length), target_modules,
                   covariance=True, progress=False)


def spread(runs: Sequence[Mapping[str, float]]) -> dict[str, dict]:
    """Per metric: mean, population std and every seed's value."""
    return {key: {"mean": _mean([r[key] for r in runs]), "std": statistics.pstdev([r[key] for r in runs]),
                  "values": [r[key] for r in runs]} for key in METRICS}


Run = Callable[[Sequence[dict], str, TrainSettings], dict[str, float]]


def dose_response(
    run: Run, poison: Callable[[float], Sequence[dict]], rates: Sequence[float], settings: TrainSettings,
    seeds: Sequence[int], method: str = "lora",
) -> list[dict]:
    """`method` trained on the task poisoned at each rate, per seed: [{rate, runs, **spread}]."""
    points = []
    for rate in rates:
        records = poison(rate)
        runs = [run(records, method, settings.model_copy(update={"seed": seed})) for seed in seeds]
        points.append({"rate": rate, "runs": runs, **spread(runs)})
    return points


def lr_sweep(
    run: Run, records: Sequence[dict], method: str, lrs: Sequence[float], settings: TrainSettings,
    seeds: Sequence[int],
) -> list[dict]:
    """`method` trained on `records` at each learning rate, per seed: [{lr, runs, **spread}]."""
    points = []
    for lr in lrs:
        runs = [run(records, method, settings.model_copy(update={"lr": lr, "seed": seed})) for seed in seeds]
        points.append({"lr": lr, "runs": runs, **spread(runs)})
    return points


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
