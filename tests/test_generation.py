"""Batched greedy generation with left padding equals one prompt at a time."""

import torch

from sclora.evaluate.generation import generate_answers
from sclora.testbed.model import build_model
from sclora.testbed.params import TestbedParams
from sclora.testbed.tokenizer import build_tokenizer

WORDS = "red blue green cat dog fox where does live how do i the".split()


def _model_and_tokenizer():
    tokenizer = build_tokenizer(WORDS)
    params = TestbedParams(hidden_size=32, layers=1, heads=2, intermediate_size=64, seed=3)
    return build_model(params, tokenizer), tokenizer


def test_batched_answers_equal_single_answers():
    model, tokenizer = _model_and_tokenizer()
    model.train()
    prompts = ["where does cat live", "red", "how do i the dog fox blue green"]  # different lengths: padding
    batched = generate_answers(model, tokenizer, prompts, batch_size=3, max_new_tokens=6)
    single = [generate_answers(model, tokenizer, [p], batch_size=1, max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(a, str) for a in batched)
    assert tokenizer.padding_side == "right" and model.training  # both restored


def test_answers_are_the_greedy_continuation_without_special_tokens():
    model, tokenizer = _model_and_tokenizer()
    prompt = "where does cat live"
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    ids = torch.tensor([ids])
    expected = []
    with torch.no_grad():
        for _ in range(4):  # greedy by hand: argmax of the last position
            next_id = model(ids).logits[0, -1].argmax().item()
            if next_id == tokenizer.eos_token_id:
                break
            expected.append(next_id)
            ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
    answer = generate_answers(model, tokenizer, [prompt], max_new_tokens=4)[0]
    assert answer == tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert "<" not in answer
