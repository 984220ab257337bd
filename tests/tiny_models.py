"""Tiny random models, batches and tokenizers for the unit tests: seconds on a CPU, real architectures."""

import torch
from peft import LoraConfig
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)  # fmt: skip
from transformers.pytorch_utils import Conv1D

from sclora.method.gather import capture
from sclora.method.table import BY_NAME
from sclora.testbed.tokenizer import build_tokenizer

VOCAB = 61
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGETS = {"llama": LLAMA_TARGETS, "qwen2": LLAMA_TARGETS, "gpt2": ["c_attn", "c_proj", "c_fc"]}


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A random 2-layer causal LM, hidden 32; biases made non-zero so the bias paths are exercised."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                         attn_pdrop=0.0, **common)  # fmt: skip
        model = GPT2LMHeadModel(cfg)
    else:
        kw = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, **common)  # fmt: skip
        model = LlamaForCausalLM(LlamaConfig(**kw)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**kw))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Linear, Conv1D)) and m.bias is not None:
                m.bias.normal_(0.0, 0.2)
    return model.eval()


def lora_config(arch: str, **kw) -> LoraConfig:
    kw = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, **kw}
    return LoraConfig(target_modules=TARGETS[arch], fan_in_fan_out=arch == "gpt2", **kw)


def batches(seed: int, n_batches: int = 2, size: int = 3, length: int = 9) -> list[dict]:
    """Random ids, right-padded: sample i of a batch has length - i real tokens."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(3, VOCAB, (size, length), generator=gen)
        mask = torch.ones(size, length, dtype=torch.long)
        for i in range(size):
            mask[i, length - i :] = 0
        out.append({"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask})
    return out


def stats(model, arch: str, seed: int, covariance: bool = False, **kw):
    return capture(model, batches(seed, **kw), TARGETS[arch], covariance=covariance, progress=False)


def logits(model, seed: int = 99) -> torch.Tensor:
    b = batches(seed, n_batches=1)[0]
    with torch.no_grad():
        return model(**b).logits[b["attention_mask"].bool()]


def task_batches(seed: int = 5, **kw) -> list[dict]:
    """`batches` with labels (padding -100), as the Trainer's collator gives them: EVA's and LoRA-GA's data."""
    out = []
    for batch in batches(seed, **kw):
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        out.append({**batch, "labels": labels})
    return out


def data_args(method: str, model, arch: str) -> dict:
    """What `method`'s row reads, made from the tiny batches (sclora: pos, neg and beta, solved in init_lora)."""
    reads = BY_NAME[method].reads
    if reads == "subspaces":
        return dict(pos=stats(model, arch, 1), neg=stats(model, arch, 2), beta=0.5)
    if reads == "pos_covariance":
        return dict(pos=stats(model, arch, 1, covariance=True))
    if reads == "neg_covariance":
        return dict(neg=stats(model, arch, 2, covariance=True, n_batches=8))
    if reads == "task_batches":
        return dict(task_batches=task_batches())
    return {}


def word_tokenizer(words) -> PreTrainedTokenizerFast:
    """The testbed's word-level tokenizer and chat template."""
    return build_tokenizer(sorted(set(words)))


def tiny_llama_config(tok) -> LlamaConfig:
    """A 1-layer Llama of hidden size 32 over `tok`'s vocabulary and special tokens."""
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
