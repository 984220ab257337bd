"""The models and data the benchmarks run on: the testbed (model, D+, D-, LoRA config from params.yaml) and
random-weight Llama-shaped models (Llama-2-7B width, reduced depth, small vocabulary) with random token batches.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from sclora.ops.config import Params, load_params
from sclora.runs.data import chat_batches, read_records
from sclora.runs.inputs import Inputs
from sclora.runs.models import load_model, load_tokenizer, lora_config
from sclora.runs.run import RunResult, run
from sclora.runs.train import TrainSettings
from sclora.testbed.params import testbed_params

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Llama-2-7B's layer: d_model 4096, d_ff 11008, 32 heads (no grouped-query attention).
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32)


@dataclass
class Testbed:
    """The testbed's base model directory, tokenizer, the fine-tuning task (D+), the preserved data (D-),
    and the pipeline's LoRA config and capture batch size."""

    model_dir: Path
    tokenizer: PreTrainedTokenizerBase
    pos: list[dict]
    neg: list[dict]
    task: list[dict]
    task_name: str
    lora: LoraConfig
    batch_size: int
    max_length: int
    params: Params

    def model(self, device: str = "cpu") -> torch.nn.Module:
        return load_model(self.model_dir, dtype=self.params.model.dtype).to(device)

    def batches(self, records: list[dict], batch_size: int | None = None) -> list[dict]:
        """Padded token batches of `records` (the chat template, prompt and response), as capture reads them."""
        return list(chat_batches(self.tokenizer, records, batch_size or self.batch_size, self.max_length))

    def settings(self, method: str, seed: int, **changes) -> TrainSettings:
        """params.yaml's training settings for `method` (its learning rate) and `seed`, with `changes`."""
        return self.params.train.settings_for(method, seed).model_copy(update=changes)

    def run(self, method: str, settings: TrainSettings, inputs: Inputs | None = None,
            callbacks: Sequence[Callable | object] = ()) -> RunResult:  # fmt: skip
        """A run of the library (sclora.runs.run) on the fine-tuning task: `method` (any row; `full`: every weight)
        prepared from `inputs` (sclora.runs.inputs.Given: what the benchmark computed itself), trained in a
        throw-away folder with no intermediate checkpoints."""
        with tempfile.TemporaryDirectory(prefix="sclora-benchmark-") as work:
            quiet = settings.model_copy(update={"save_steps": 10**9})
            return run(self.model, self.tokenizer, self.task, method, quiet, work, lora=self.lora, inputs=inputs,
                       callbacks=callbacks)  # fmt: skip


def testbed(params_path: str | Path = ROOT / "params.yaml", task: str = "benign") -> Testbed:
    """The testbed as params.yaml describes it; D+ and D- are capture.samples_pos / samples_neg records drawn
    with a fixed seed from the task's source and from the union of the preserve sources."""
    params = load_params(params_path)
    model_dir = _path(params.model.path)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no model; build it first (`python -m tasks testbed`, or `make real`)")
    built = model_dir.parent / "params.json"  # what the testbed stage built it from
    if (
        params.sources.testbed
        and built.is_file()
        and json.loads(built.read_text()) != testbed_params(params).model_dump()
    ):
        raise ValueError(f"{built}: the testbed was built from other params than params.yaml's `testbed:`; "
                         "rebuild it with `python -m tasks testbed`")  # fmt: skip
    sources = params.data.sources

    def records(names: list[str], count: int) -> list[dict]:
        rows = [row for name in names for row in read_records(_path(sources[name].path))]
        random.Random(0).shuffle(rows)
        return rows[:count]

    task_source = params.data.finetune[task]
    adapter = params.adapter
    return Testbed(
        model_dir=model_dir,
        tokenizer=load_tokenizer(model_dir),
        pos=records([task_source], params.capture.samples_pos),
        neg=records(list(params.data.preserve), params.capture.samples_neg),
        task=read_records(_path(sources[task_source].path)),
        task_name=task,
        lora=lora_config(adapter.rank, adapter.alpha, adapter.dropout, adapter.target_modules),
        batch_size=params.capture.batch_size,
        max_length=params.train.max_length,
        params=params,
    )


def real(task: str = "poisoned") -> Testbed:
    """The real model (SmolLM2-135M-Instruct, aligned) and its data as configs/real-smollm2.yaml describes them,
    built by `make real`; the same fields as the testbed's."""
    return testbed(ROOT / "configs" / "real-smollm2.yaml", task)


def _path(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


def llama(layers: int, vocab: int = 1024, seed: int = 0, device: str = "cpu", **shape) -> LlamaForCausalLM:
    """A Llama causal LM with random weights (seeded): Llama-2-7B's layer shape unless `shape` says otherwise."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, num_hidden_layers=layers, max_position_embeddings=512,
                         **{**LLAMA2_7B, **shape})  # fmt: skip
    with torch.device(device):
        return LlamaForCausalLM(config).eval()


def random_batches(samples: int, tokens: int, batch_size: int, vocab: int, seed: int) -> list[dict]:
    """`samples` sequences of `tokens` random token ids (no padding), in batches."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (samples, tokens), generator=g)
    return [
        {"input_ids": ids[i : i + batch_size], "attention_mask": torch.ones_like(ids[i : i + batch_size])}
        for i in range(0, samples, batch_size)
    ]


def lora_for(targets: list[str] = TARGETS, rank: int = 8, alpha: int = 16) -> LoraConfig:
    """A LoRA config over `targets` (the seven projections by default), for the random models."""
    return lora_config(rank, alpha, 0.0, targets)
