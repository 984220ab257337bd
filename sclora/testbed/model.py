"""The testbed's base model: a small Llama-architecture causal LM over the testbed tokenizer."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from sclora.testbed.params import TestbedParams


def build_model(params: TestbedParams, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A freshly initialised LlamaForCausalLM sized by `params` (seeded by `params.seed`)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=params.hidden_size,
        intermediate_size=params.intermediate_size,
        num_hidden_layers=params.layers,
        num_attention_heads=params.heads,
        num_key_value_heads=params.heads,
        max_position_embeddings=params.max_length,
        # Untied, as in most LLMs: adapters then see a frozen output layer of its own.
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(params.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
