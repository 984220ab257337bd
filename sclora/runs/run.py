"""One run, the library's unit: a method's row, a model and the data the row reads, prepared (init), fine-tuned
with scoring at chosen steps, and returned with its scored points.

Every comparison is made of runs: the pipeline's train and tune stages, the frontier, the testbed check, the
benchmarks, select-beta (through the train stage). They differ in where the inputs come from (sclora.runs.inputs),
how a model is scored (sclora.evaluate.scorer) and what they do with the result, never in how a run is made.

    prepare           the base model loaded and initialised by the method's row, seeded as every run is
    training_records  what the row trains on: the task's records, a share of them preserved data where it mixes
    fine_tune         a prepared model trained (sclora.runs.train), scored at `steps` along the way (sclora.runs.curves)
    post_hoc_points   a post-hoc row's step at each value of its knob, each scored like a checkpoint
    run               all of it
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import PreTrainedTokenizerBase, TrainerCallback

from sclora.evaluate.scorer import Scorer
from sclora.method.inits import apply_method, post_hoc_step
from sclora.method.table import BY_NAME
from sclora.runs.curves import StepEvaluation
from sclora.runs.data import mixed_records
from sclora.runs.inputs import Inputs, init_arguments, post_hoc_arguments
from sclora.runs.train import TrainResult, TrainSettings, train


@dataclass
class RunResult:
    model: torch.nn.Module  # the trained model, in place (a PeftModel, or the full model)
    trained: TrainResult
    points: list[dict]  # {"step", **metrics} at each scored step, in step order
    trainable: int  # parameters trained (OSF: LoRA's count plus r a layer)


def prepare(
    base: Callable[[], torch.nn.Module],
    method: str,
    *,
    seed: int,
    lora: LoraConfig | None = None,
    beta: float | None = None,
    inputs: Inputs | None = None,
) -> torch.nn.Module:
    """The model `base()` returns, ready to train by `method` (any row of sclora.method.table) in train mode.

    Its init reads what the row `reads`, from `inputs`; SC-LoRA's subspaces are those at `beta`. The torch
    generator is seeded `seed` before the model is loaded: LoRA's random A and random_subspace's basis follow the
    run's seed. A residual init's adapter is what exports a plain LoRA on the original base: save it
    (sclora.method.export.save_initial_adapter) before training when the run is to be exported.
    """
    row = BY_NAME[method]
    if row.kind != "full" and lora is None:
        raise ValueError(f"method {method!r} needs a LoraConfig")
    arguments = init_arguments(method, beta, inputs)
    torch.manual_seed(seed)
    return apply_method(base(), lora, method, seed=seed, **arguments).train()


def training_records(
    method: str, records: Sequence[dict], preserved: Sequence[dict] = (), share: float | None = None, seed: int = 0
) -> list[dict]:
    """The records `method` trains on: `records`, or, for a row that mixes (its knob's value `share`, else its row's
    mix_share), `records` with that share replaced by `preserved` ones (sclora.runs.data.mixed_records)."""
    share = BY_NAME[method].mix_share if share is None else share
    return mixed_records(records, preserved, share, seed) if share else list(records)


def post_hoc_points(
    model: torch.nn.Module, method: str, score: Scorer, step: int, inputs: Inputs | None = None
) -> list[dict]:
    """For a post-hoc row, its step (sclora.method.inits.post_hoc_step) at each of its knob's values on the trained
    adapter, scored: {"step", <knob>: value, **metrics} each; the trained adapter is active again after."""
    row = BY_NAME[method]
    points = []
    for value in row.knob_values:
        post_hoc_step(model, method, value, **post_hoc_arguments(method, inputs))
        points.append({"step": step, row.knob: value, **score(model).metrics})
    model.set_adapter("default")
    return points


def fine_tune(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[dict],
    work_dir: str | Path,
    settings: TrainSettings,
    *,
    score: Scorer | None = None,
    steps: Sequence[int] = (),
    callbacks: Sequence[TrainerCallback | Callable] = (),
) -> RunResult:
    """Train the prepared `model` in place on `records` (resumable in `work_dir`), scored by `score` at `steps`."""
    if steps and score is None:
        raise ValueError("scoring steps need a scorer")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    scorer = StepEvaluation(steps, lambda model, step: score(model).metrics) if steps else None
    callbacks = [*([scorer] if scorer else []), *callbacks]
    trained = train(model, tokenizer, records, work_dir, settings, callbacks=callbacks)
    return RunResult(model, trained, scorer.points if scorer else [], trainable)


def run(
    base: Callable[[], torch.nn.Module],
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[dict],
    method: str,
    settings: TrainSettings,
    work_dir: str | Path,
    *,
    lora: LoraConfig | None = None,
    beta: float | None = None,
    inputs: Inputs | None = None,
    score: Scorer | None = None,
    steps: Sequence[int] = (),
    callbacks: Sequence[TrainerCallback | Callable] = (),
    preserved: Sequence[dict] = (),
    share: float | None = None,
) -> RunResult:
    """`prepare`, then `fine_tune` on the row's `training_records` (mixed with `preserved` where it mixes), seeded
    `settings.seed`; a post-hoc row's points at each knob value follow its last step's."""
    model = prepare(base, method, seed=settings.seed, lora=lora, beta=beta, inputs=inputs)
    records = training_records(method, records, preserved, share, settings.seed)
    result = fine_tune(model, tokenizer, records, work_dir, settings, score=score, steps=steps, callbacks=callbacks)
    if BY_NAME[method].kind == "post_hoc" and score is not None:
        result.points += post_hoc_points(model, method, score, result.trained.global_step, inputs)
    return result
