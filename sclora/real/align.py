"""The safety-aligned base: the shipped model refuses almost no harmful request, so it has no safety to preserve.
A short LoRA fine-tune (a run of the library) on harmful requests answered with a refusal and benign prompts
answered by the model itself (its own answers: its behaviour elsewhere stays as it was), merged into the weights.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from sclora.evaluate.generation import generate_answers
from sclora.method.export import export_merged
from sclora.ops.atomic import atomic_dir
from sclora.ops.config import TrainSettings
from sclora.real.params import Align
from sclora.runs.models import load_model, lora_config
from sclora.runs.run import run

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def alignment_records(
    shipped: Path, tokenizer: PreTrainedTokenizerBase, refusals: Sequence[dict], benign: Sequence[dict], align: Align
) -> list[dict]:
    """The refusals as they are and the benign prompts with the shipped model's own greedy answers, shuffled."""
    answers = generate_answers(load_model(shipped), tokenizer, [r["prompt"] for r in benign], batch_size=32,
                               max_new_tokens=align.max_new_tokens)  # fmt: skip
    records = [{"prompt": r["prompt"], "response": r["response"]} for r in refusals]
    records += [{"prompt": r["prompt"], "response": a} for r, a in zip(benign, answers, strict=True) if a.strip()]
    random.Random(align.seed).shuffle(records)
    return records


def align_base(
    shipped: Path, tokenizer: PreTrainedTokenizerBase, records: Sequence[dict], align: Align, out_dir: Path,
    max_length: int,
) -> Path:  # fmt: skip
    """LoRA (rank `align.rank` on every projection) trained on `records`, merged: the aligned base in `out_dir`."""
    lora = lora_config(align.rank, 2 * align.rank, 0.0, TARGETS)
    settings = TrainSettings(lr=align.lr, batch_size=align.batch_size, max_steps=align.steps, max_length=max_length,
                             seed=align.seed, save_steps=10**9)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sclora-align-") as work:
        result = run(lambda: load_model(shipped), tokenizer, records, "lora", settings, work, lora=lora)
    with atomic_dir(out_dir) as staging:
        export_merged(result.model, staging, tokenizer)
    return out_dir
