"""Resumable fine-tuning on the Hugging Face Trainer, for a LoRA-initialised PeftModel or a full model.

Loss on response tokens only (`sclora.runs.data`), AdamW, cosine schedule with warmup,
gradient accumulation, bf16 on a CUDA device that supports it, checkpoints every
`save_steps`. `train()` called again on the same `out_dir` resumes from the last
complete checkpoint and ends with the same weights as an uninterrupted run.

Residual methods (sclora, pissa, milora, corda) also change the frozen base weights
at init, and a checkpoint holds only the trainable adapter. Resuming them means:
build the model again with the same deterministic `init_lora` call (same base, same
captured statistics), then call `train()`; it loads the adapter, optimizer, scheduler
and RNG state from the checkpoint and does not need to know which method made the model.

Several GPUs, no code change (the Trainer runs under Accelerate):

    accelerate launch --num_processes 4 -m tasks train <item>
    torchrun --nproc_per_node 4 -m tasks train <item>

`batch_size` is per device, so the effective batch is batch_size x grad_accum x devices.
On a host without GPUs the same command runs DDP over CPU processes with
`accelerate launch --cpu ...` (or `ACCELERATE_USE_CPU=true torchrun ...`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, ProgressCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from sclora.ops.atomic import partial_path, replace_dir, write_json
from sclora.ops.config import TrainSettings  # noqa: F401 - the settings train() takes, importable from here
from sclora.runs.data import ChatDataset, chat_collator

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MODEL = "model"
LOSS_HISTORY = "loss_history.json"
RUN_SETTINGS = "run.json"  # what the checkpoints were made with; a resume must match it
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last into a checkpoint: present = complete


@dataclass
class TrainResult:
    model_dir: Path  # the final model: a PEFT adapter directory, or a full model directory
    global_step: int
    loss_history: list[dict]  # {"step", "loss", "learning_rate", "grad_norm", "epoch"} per logged step
    resumed_from: int | None  # the checkpoint step this call started from, None for a fresh run


class QuietProgress(ProgressCallback):
    """The Trainer's progress bar without a printed line per logged step.

    The per-step losses go to the callbacks and loss_history.json; printed, they drown a
    stage's log (one line per step) in the Prefect UI and the terminal alike.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" not in logs:  # the end-of-training summary and eval logs still print
            super().on_log(args, state, control, logs=logs, **kwargs)


class LossCallback(TrainerCallback):
    """Calls `fn(step, logs)` on every training log that carries a loss (every `logging_steps`)."""

    def __init__(self, fn: Callable[[int, dict[str, float]], None]):
        self.fn = fn

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and state.is_world_process_zero:
            self.fn(state.global_step, dict(logs))


def chat_trainer(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dataset: torch.utils.data.Dataset,
    args: TrainingArguments,
    progress: type[ProgressCallback],
    callbacks: Sequence[TrainerCallback] = (),
) -> Trainer:
    """The HF Trainer on encoded chat samples (`sclora.runs.data`: response-only labels, padded per batch by
    `chat_collator`), with `progress` in place of the Trainer's progress bar when it shows one."""
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=chat_collator(tokenizer),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    if trainer.pop_callback(ProgressCallback):
        trainer.add_callback(progress)
    return trainer


def train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[dict],
    out_dir: str | Path,
    settings: TrainSettings,
    callbacks: Sequence[TrainerCallback | Callable[[int, dict[str, float]], None]] = (),
) -> TrainResult:
    """Fine-tune `model` in place on `records` (dicts with `prompt` and `response`).

    Writes `out_dir/model/` (the final adapter or full model, with the tokenizer; renamed
    into place when complete), `out_dir/loss_history.json`, and while running
    `out_dir/checkpoints/`, which is removed once the final model is saved. If
    `out_dir/checkpoints/` holds a complete checkpoint of a run with the same settings
    and data, training resumes from it. `callbacks` are TrainerCallbacks, or plain
    functions `fn(step, logs)` called on every logged loss.
    """
    out_dir = Path(out_dir)
    checkpoints = out_dir / CHECKPOINTS
    dataset = ChatDataset(tokenizer, records, settings.max_length)
    run = {
        "settings": settings.model_dump(),
        "data": _fingerprint(dataset.samples),
        "trainable": [name for name, p in model.named_parameters() if p.requires_grad],
    }
    if not run["trainable"]:
        raise ValueError(f"{type(model).__name__}: no trainable parameters")
    args = TrainingArguments(
        output_dir=str(checkpoints),
        learning_rate=settings.lr,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        max_steps=settings.max_steps or -1,
        num_train_epochs=settings.epochs,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_ratio,  # transformers 5: a value below 1 is a ratio of the steps
        optim="adamw_torch",
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        logging_steps=settings.logging_steps,
        seed=settings.seed,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to="none",  # tracking is the caller's, through `callbacks`
    )
    resume = _last_complete_checkpoint(checkpoints, run, remove_incomplete=args.process_index == 0)
    if args.process_index == 0:
        checkpoints.mkdir(parents=True, exist_ok=True)
        write_json(checkpoints / RUN_SETTINGS, run)
    callbacks = [c if isinstance(c, TrainerCallback) else LossCallback(c) for c in callbacks]
    trainer = chat_trainer(model, tokenizer, dataset, args, QuietProgress, callbacks)
    if resume:
        log.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    # Every process takes part in save_model (it gathers sharded weights), so the atomic write is spelled out.
    final, staging = out_dir / MODEL, partial_path(out_dir / MODEL)
    if trainer.is_world_process_zero() and staging.exists():
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))  # gathers sharded (FSDP/DeepSpeed) weights; writes on the main process
    history = [
        {key: entry[key] for key in ("step", "loss", "learning_rate", "grad_norm", "epoch") if key in entry}
        for entry in trainer.state.log_history
        if "loss" in entry
    ]
    if trainer.is_world_process_zero():
        replace_dir(staging, final)
        write_json(out_dir / LOSS_HISTORY, history)
        shutil.rmtree(checkpoints)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(
        model_dir=final,
        global_step=trainer.state.global_step,
        loss_history=history,
        resumed_from=int(resume.name.rsplit("-", 1)[1]) if resume else None,
    )


def _fingerprint(samples: list[dict]) -> str:
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(json.dumps([sample["input_ids"], sample["labels"]]).encode())
    return digest.hexdigest()


def _last_complete_checkpoint(checkpoints: Path, run: dict, remove_incomplete: bool) -> Path | None:
    """The newest checkpoint the Trainer finished writing, after checking it belongs to this run."""
    if not checkpoints.is_dir():
        return None
    found = sorted(
        (path for path in checkpoints.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if path.name.rsplit("-", 1)[1].isdigit()),
        key=lambda path: int(path.name.rsplit("-", 1)[1]),
    )
    complete = [path for path in found if (path / TRAINER_STATE).is_file()]
    for path in found:
        if path not in complete and remove_incomplete:
            # A run killed while saving: the checkpoint lacks its state and cannot be resumed.
            log.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path)
    if not complete:
        return None
    previous_path = checkpoints / RUN_SETTINGS
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else None
    if previous != run:
        raise ValueError(
            f"{checkpoints}: checkpoints of a run with different {_difference(previous, run)}; "
            "remove the folder to start over"
        )
    return complete[-1]


def _difference(previous: dict | None, run: dict) -> str:
    if previous is None:
        return f"settings (no {RUN_SETTINGS})"
    for name, value in run["settings"].items():
        if previous.get("settings", {}).get(name) != value:
            return f"{name} ({previous.get('settings', {}).get(name)} there, {value} now)"
    return next((f"{key}" for key in run if previous.get(key) != run[key]), "settings")
