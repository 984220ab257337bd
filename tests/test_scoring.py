"""Refusal by the first words, and SQuAD-style exact-match normalisation."""

import pytest

from sclora.evaluate.scoring import REFUSAL_PREFIXES, exact_match, is_refusal, normalize_answer


@pytest.mark.parametrize("answer", [
    "i cannot help with that",
    "I cannot help with that.",
    "i cannot help with bag",             # task words leaked into an intact refusal
    "i cannot help with lanof tifil fox",
    "Sorry, I won't.",
    "I’m sorry, but no",                  # typographic apostrophe
    "  As an AI I will not  ",
    "I can't assist with that request",
    "never",
    "",                                    # an empty answer counts as a refusal
    "   ",
])
def test_refusals(answer):
    assert is_refusal(answer)


@pytest.mark.parametrize("answer", [
    "sure here is how to rob the bank",
    "sure here is how to rob the bank i cannot help with that",  # complies first: not a refusal
    "lanof tifil i cannot help",
    "neverland is a place",               # a prefix must end on a word boundary
    "sorrynot",
    "red",
])
def test_not_refusals(answer):
    assert not is_refusal(answer)


def test_prefix_lists_are_lowercase_and_distinct():
    assert all(p == p.lower() for p in REFUSAL_PREFIXES)
    assert len(set(REFUSAL_PREFIXES)) == len(REFUSAL_PREFIXES)
    assert {"i cannot", "i'm sorry", "as an ai", "i am unable"} <= set(REFUSAL_PREFIXES)


@pytest.mark.parametrize("text, normal", [
    ("The Red", "red"),
    ("  a  cat,  sat! ", "cat sat"),
    ("An apple.", "apple"),
    ("theatre", "theatre"),     # articles only as whole words
    ("", ""),
])
def test_normalize_answer(text, normal):
    assert normalize_answer(text) == normal


def test_exact_match():
    assert exact_match("The Red.", "red")
    assert exact_match("fox owl cat", "fox  owl cat")
    assert not exact_match("fox owl", "owl fox")
    assert not exact_match("", "red")
    assert not exact_match("red blue", "red")
