"""Load the base model and tokenizer the pipeline fine-tunes, and the LoRA config every method shares.

Any Hugging Face causal-LM directory (the testbed's `artifacts/testbed/base`, or a real
model) goes through the same three calls, so no stage knows which one it runs on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the model (its chat template is what `sclora.data` encodes with)."""
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def load_model(path: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False) -> PreTrainedModel:
    """The causal LM at `path` in `dtype`, in eval mode."""
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype: unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    return model.eval()


def load_with_adapter(
    path: str | Path, adapter_dir: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False
) -> PeftModel:
    """The base model at `path` with a plain LoRA adapter (e.g. `sclora.export.export_lora`'s) on top, in eval mode."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: not a PEFT adapter directory (no adapter_config.json)")
    base = load_model(path, dtype=dtype, trust_remote_code=trust_remote_code)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def lora_config(rank: int, alpha: float, dropout: float, target_modules: Sequence[str]) -> LoraConfig:
    """The one LoRA config of a comparison: same rank, scaling and targets for every method."""
    return LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), task_type="CAUSAL_LM"
    )
