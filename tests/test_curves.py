"""Scoring a run along its training (sclora.runs.curves) and the task's held-out loss (sclora.evaluate.task_loss)."""

import pytest
import torch
from test_train import RECORDS, SETTINGS, tiny_lora
from tiny_models import word_tokenizer

from sclora.evaluate.task_loss import task_nll
from sclora.runs.curves import StepEvaluation, checkpoint_steps
from sclora.runs.data import ChatDataset, chat_collator
from sclora.runs.train import train

NAMES = "zorbia quelt mirra tabo ulun vesk opal drin kest ferro lumo nadir pell rusk sorn yvo".split()


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer("what is the capital of it".split() + NAMES)


def test_checkpoint_steps_are_the_shares_of_the_run():
    assert checkpoint_steps(150, [0.25, 0.5, 1.0]) == [38, 75, 150]
    assert checkpoint_steps(3, [0.1, 0.5, 1.0]) == [1, 2, 3]  # at least step 1; duplicates merged
    for bad in ([], [0.0], [1.5]):
        with pytest.raises(ValueError, match="fractions must be in"):
            checkpoint_steps(10, bad)


def test_scoring_along_the_way_changes_nothing_in_training(tok, tmp_path):
    """The same run with and without StepEvaluation ends with the same weights; the scores are of the live model
    at each chosen step (the last one equal to scoring the final model)."""
    plain = tiny_lora(tok)
    train(plain, tok, RECORDS, tmp_path / "plain", SETTINGS)
    scored_model = tiny_lora(tok)
    seen = []

    def score(model, step):
        seen.append((step, model.training))
        return {"nll": task_nll(model, tok, RECORDS, max_length=16)}

    scorer = StepEvaluation(checkpoint_steps(SETTINGS.max_steps, [0.5, 1.0]), score)
    train(scored_model, tok, RECORDS, tmp_path / "scored", SETTINGS, callbacks=[scorer])
    for (name, a), b in zip(plain.named_parameters(), scored_model.parameters(), strict=True):
        assert torch.equal(a, b), name  # the same computation repeated: bit-identical
    assert [p["step"] for p in scorer.points] == [4, 7]
    assert seen == [(4, False), (7, False)]  # scored in eval mode
    assert scored_model.training  # and handed back in train mode
    final = task_nll(plain, tok, RECORDS, max_length=16)
    assert scorer.points[-1]["nll"] == pytest.approx(final, rel=1e-5)


def test_task_nll_is_the_trainers_loss(tok):
    """The mean cross-entropy per answer token, as the model's own loss computes it on the same batch."""
    model = tiny_lora(tok).eval()
    dataset = ChatDataset(tok, RECORDS, 16)
    batch = chat_collator(tok)([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        expected = float(model(**batch).loss)
    assert task_nll(model, tok, RECORDS, max_length=16, batch_size=3) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="no trainable samples"):
        task_nll(model, tok, [], max_length=16)
