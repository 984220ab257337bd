"""Load the base model and tokenizer the pipeline fine-tunes, and the LoRA config every method shares.

Any Hugging Face causal-LM directory (the testbed's `artifacts/testbed/base`, or a real
model) goes through the same three calls, so no stage knows which one it runs on.
Loading is safe by default: weights only from safetensors files (never a pickle),
and model code shipped with the weights runs only when `trust_remote_code` is passed
(from params: `model.trust_remote_code`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the model (its chat template is what `sclora.runs.data` encodes with)."""
    source = _source(path, ("tokenizer.json", "tokenizer_config.json"), "tokenizer")
    with _loading(source, "tokenizer"):
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


def load_model(path: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False) -> PreTrainedModel:
    """The causal LM at `path` in `dtype`, in eval mode."""
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype: unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    source = _source(path, ("config.json",), "model")
    with _loading(source, "model"):
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, use_safetensors=True
        )
    return model.eval()


def load_with_adapter(
    path: str | Path, adapter_dir: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False
) -> PeftModel:
    """The base model at `path` with a plain LoRA adapter (e.g. `sclora.method.export.export_lora`'s) on top, in eval
    mode."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: not a PEFT adapter directory (no adapter_config.json)")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_model.safetensors (adapters load from safetensors only)")
    base = load_model(path, dtype=dtype, trust_remote_code=trust_remote_code)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def _source(path: str | Path, markers: tuple[str, ...], what: str) -> str:
    """`path` for from_pretrained: a local directory holding one of `markers`, or a hub name (`org/name`)."""
    text = str(path)
    local = Path(text)
    if local.is_dir():
        if not any((local / marker).is_file() for marker in markers):
            raise FileNotFoundError(f"{text}: not a {what} directory (no {' or '.join(markers)})")
        return text
    if local.exists():
        raise NotADirectoryError(f"{text}: a file, not a {what} directory")
    if local.is_absolute() or text.startswith((".", "~")) or text.count("/") != 1:
        raise FileNotFoundError(f"{text}: no model directory there")
    return text


@contextmanager
def _loading(source: str, what: str) -> Iterator[None]:
    """Transformers' multi-line loading errors as one line naming the path."""
    try:
        yield
    except OSError as error:
        lines = str(error).strip().splitlines()
        detail = lines[0] if lines else type(error).__name__
        if not Path(source).exists():
            message = f"{source}: no model directory there, and no hub {what} of that name ({detail})"
            raise FileNotFoundError(message) from None
        raise OSError(f"{source}: cannot load the {what}: {detail}") from None


def lora_config(rank: int, alpha: float, dropout: float, target_modules: Sequence[str]) -> LoraConfig:
    """The one LoRA config of a comparison: same rank, scaling and targets for every method."""
    return LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), task_type="CAUSAL_LM"
    )
