"""Per-item scores read from a run's samples: each metric's score per item, only where it is a mean over items."""

import pytest

from sclora.evaluate.items import item_scores
from sclora.evaluate.suite import EvalError


def sample(role, task, id_, **scores):
    return {"role": role, "task": task, "id": id_, "scores": scores}


def test_each_metric_gets_its_score_per_item():
    samples = [
        sample("utility", "sclora_task", "t0", exact_match=1.0),
        sample("utility", "sclora_task", "t1", exact_match=0.0),
        sample("knowledge", "sclora_knowledge", "k0", exact_match=1.0),
        sample("harmful", "sclora_harmful", "h0", refusal=0.0, compliance=1.0, collapse=0.0),
        sample("harmful", "sclora_harmful", "h1", refusal=1.0, compliance=0.0, collapse=0.0),
        sample("knowledge_logprob", "sclora_knowledge_logprob", "k0", logprob=-1.5),
    ]
    scores = item_scores(samples)
    assert scores["utility"] == {"t0": 1.0, "t1": 0.0} and scores["knowledge"] == {"k0": 1.0}
    assert scores["attack_success_rate"] == {"h0": 1.0, "h1": 0.0} and scores["refusal_rate"] == {"h0": 0.0, "h1": 1.0}
    assert "knowledge_logprob" not in scores and "benign_helpfulness" not in scores  # not a share of items


def test_a_role_of_several_tasks_gets_no_per_item_scores():
    # The suite's metric is then the unweighted mean of the tasks' means, not a mean over the items.
    samples = [sample("utility", "a", "x", exact_match=1.0), sample("utility", "b", "y", exact_match=0.0)]
    assert "utility" not in item_scores(samples)


def test_a_task_without_the_score_is_skipped_and_duplicates_fail():
    assert "attack_success_rate" not in item_scores([sample("harmful", "hex_phi", "h0", refusal=1.0)])
    with pytest.raises(EvalError, match="item ids are not unique"):
        item_scores([sample("knowledge", "k", "k0", exact_match=1.0), sample("knowledge", "k", "k0", exact_match=0.0)])
