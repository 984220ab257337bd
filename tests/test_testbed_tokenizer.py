"""The testbed tokenizer: word-level ids, the chat template of the contract, save/reload."""

import pytest
from transformers import AutoTokenizer

from sclora.runs.data import IGNORE_INDEX, encode_chat
from sclora.testbed.tokenizer import SPECIAL_TOKENS, build_tokenizer

WORDS = ["the", "cat", "sat", "on", "mat", "the"]


@pytest.fixture
def tokenizer():
    return build_tokenizer(WORDS)


def test_vocabulary_is_special_tokens_then_unique_words(tokenizer):
    vocab = tokenizer.get_vocab()
    assert len(vocab) == len(SPECIAL_TOKENS) + 5
    assert [vocab[t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tokenizer("the cat sat", add_special_tokens=False)["input_ids"] == [vocab["the"], vocab["cat"], vocab["sat"]]
    assert tokenizer("the dog", add_special_tokens=False)["input_ids"] == [vocab["the"], tokenizer.unk_token_id]


def test_special_token_ids(tokenizer):
    special = [tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id]
    assert tokenizer.convert_ids_to_tokens(special) == ["<pad>", "<eos>", "<bos>"]


def test_chat_template_renders_the_contract(tokenizer):
    full = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat on mat"}]
    assert tokenizer.apply_chat_template(full, tokenize=False) == "<bos> <user> the cat <assistant> sat on mat <eos>"
    prompt = tokenizer.apply_chat_template(full[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos> <user> the cat <assistant>"


def test_decode_drops_special_tokens(tokenizer):
    ids = tokenizer("<bos> <user> the cat <assistant> sat <eos>", add_special_tokens=False)["input_ids"]
    assert len(ids) == 7
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the cat sat"


def test_encode_chat_puts_loss_on_response_and_eos_only(tokenizer):
    sample = encode_chat(tokenizer, "the cat", "sat on mat", max_length=32)
    words = tokenizer.convert_ids_to_tokens(sample["input_ids"])
    assert words == ["<bos>", "<user>", "the", "cat", "<assistant>", "sat", "on", "mat", "<eos>"]
    supervised = [w for w, label in zip(words, sample["labels"], strict=True) if label != IGNORE_INDEX]
    assert supervised == ["sat", "on", "mat", "<eos>"]


def test_save_and_reload_keeps_ids_and_template(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    messages = [{"role": "user", "content": "cat on mat"}]
    assert reloaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<bos> <user> cat on mat <assistant>"
    )
    assert reloaded.pad_token_id == tokenizer.pad_token_id and reloaded.eos_token_id == tokenizer.eos_token_id


def test_words_with_whitespace_are_refused():
    with pytest.raises(ValueError, match="whitespace"):
        build_tokenizer(["two words"])
