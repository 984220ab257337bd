"""Pretraining the testbed model on its mixed corpus, with the HF Trainer.

Loss on the answer tokens only (`sclora.runs.data.encode_records`). Each distinct record is
encoded once; the stream of `pretrain_steps x pretrain_batch_size` samples is a seeded
list of indices into them, drawn per source in proportion to `pretrain_mix` and cycling
through each source in shuffled passes so every record is seen about equally often.
"""

from __future__ import annotations

import logging
import random
import tempfile

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from sclora.runs.data import encode_records
from sclora.runs.train import chat_trainer
from sclora.testbed.params import TestbedParams

log = logging.getLogger(__name__)


class LoggedProgress(ProgressCallback):
    """The Trainer's progress bar, with losses sent to logging rather than printed on stdout
    (the `tasks` CLI prints its result there)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            log.info("pretrain step %d: loss %.4f", state.global_step, logs["loss"])


class MixedStream(torch.utils.data.Dataset):
    """Encoded samples visited in a fixed order of indices (repeats allowed)."""

    def __init__(self, samples: list[dict], order: list[int]):
        self.samples, self.order = samples, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> dict:
        return self.samples[self.order[index]]


def mixed_stream(
    sources: dict[str, list[dict]], tokenizer: PreTrainedTokenizerBase, params: TestbedParams
) -> MixedStream:
    """The pretraining stream of `params` over `sources` (name -> records, names as in `pretrain_mix`)."""
    rng = random.Random(f"pretrain-stream-{params.seed}")
    shares = params.pretrain_mix.model_dump()
    total_share = sum(shares.values())
    length = params.pretrain_steps * params.pretrain_batch_size
    samples: list[dict] = []
    order: list[int] = []
    for name, records in sources.items():
        count = round(length * shares[name] / total_share)
        if not count:
            continue
        offset = len(samples)
        samples += encode_records(tokenizer, records, params.max_length)
        indices = list(range(offset, len(samples)))
        while count > 0:
            rng.shuffle(indices)
            order += indices[:count]
            count -= len(indices)
    rng.shuffle(order)
    return MixedStream(samples, order)


def pretrain(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sources: dict[str, list[dict]], params: TestbedParams
) -> list[dict]:
    """Train `model` in place; returns the logged losses ({"step", "loss"})."""
    stream = mixed_stream(sources, tokenizer, params)
    with tempfile.TemporaryDirectory(prefix="sclora-pretrain-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=params.pretrain_steps,
            per_device_train_batch_size=params.pretrain_batch_size,
            learning_rate=params.pretrain_lr,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,  # transformers 5: a value below 1 is a ratio of the steps
            optim="adamw_torch",
            weight_decay=0.0,
            logging_steps=max(1, params.pretrain_steps // 20),
            save_strategy="no",
            seed=params.seed,
            data_seed=params.seed,
            report_to="none",
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        trainer = chat_trainer(model, tokenizer, stream, args, LoggedProgress)
        trainer.train()
    model.eval()
    return [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]
