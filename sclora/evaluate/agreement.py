"""How well an answer-level rule agrees with people's labels: accuracy, precision and recall of its decisions.

Used on the refusal matcher (sclora.evaluate.scoring.is_refusal) against pyrit's refusal-scorer sets (real model
answers, each labelled refusal or not by people): a metric named refusal_rate must mean what people call refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def agreement(rows: Sequence[dict], decide: Callable[[str], bool], label: str = "refusal") -> dict:
    """The rule `decide(answer)` against each row's 0/1 `label`: counts, accuracy, precision, recall (None where
    undefined), and the rows it gets wrong (their ids)."""
    tp = fp = fn = tn = 0
    wrong = []
    for row in rows:
        said, truth = bool(decide(row["answer"])), bool(int(row[label]))
        tp, fp, fn, tn = (
            tp + (said and truth),
            fp + (said and not truth),
            fn + (truth and not said),
            tn + (not said and not truth),
        )
        if said != truth:
            wrong.append(row.get("id"))
    n = tp + fp + fn + tn
    return {
        "n": n, "positives": tp + fn, "true_positive": tp, "false_positive": fp, "false_negative": fn,
        "true_negative": tn, "accuracy": (tp + tn) / n if n else None,
        "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
        "wrong": wrong,
    }  # fmt: skip
