"""A GGUF model (a quantised llama.cpp file) converted once to a plain Hugging Face folder: float32 safetensors,
its tokenizer and chat template, loadable by every stage without the `gguf` package and in a fraction of the time.

transformers reads the GGUF and dequantises it; its save path refuses a model it loaded through a quantizer, so the
quantizer and the config's quantization entry are dropped first (the weights are plain float32 tensors by then).
"""

from __future__ import annotations

from pathlib import Path

from sclora.ops.atomic import atomic_dir


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """`gguf` as a safetensors model folder in `out_dir` (written whole, or not at all)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return out_dir
