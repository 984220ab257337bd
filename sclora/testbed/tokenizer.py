"""Word-level tokenizer with a chat template for the testbed model.

Word-level on purpose: the world's sentences are built from a closed vocabulary, so
one token per word keeps the model tiny and makes "every word the task produces was
seen in pretraining" a checkable fact rather than a hope.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>", "<user>", "<assistant>"]

# Renders `<bos> <user> p <assistant> r <eos>`; words are separated by spaces so the
# whitespace pre-tokenizer splits the special tokens off as their own words.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ ' <user> ' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ ' <assistant> ' + message['content'] + ' ' + eos_token }}"
    "{% else %}{{ raise_exception('unsupported role: ' + message['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ' <assistant>' }}{% endif %}"
)


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words` (deduplicated, order kept) plus the chat special tokens."""
    vocab: dict[str, int] = {}
    for word in [*SPECIAL_TOKENS, *words]:
        if not word or any(ch.isspace() for ch in word):
            raise ValueError(f"vocabulary word {word!r} is empty or contains whitespace")
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        additional_special_tokens=["<user>", "<assistant>"],
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.padding_side = "right"
    return tokenizer
