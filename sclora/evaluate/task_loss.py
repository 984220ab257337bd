"""The task's loss on a held-out split: the training objective (mean cross-entropy per answer token) measured on
records the model never trained on, as the continuous read of learning beside the exact-match utility.

Exact match moves in steps of one record and pins at 0 and 1; the loss keeps moving under and past both. Computed
as the Trainer computes its training loss (the same encoding, collator and labels), so the two are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from sclora.runs.data import IGNORE_INDEX, ChatDataset, chat_collator


def task_nll(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[dict],
    *,
    max_length: int,
    batch_size: int = 128,
) -> float:
    """Mean negative log-likelihood per answer token of `records` (dicts with prompt and response) under `model`."""
    dataset = ChatDataset(tokenizer, records, max_length)  # no record with an answer token left: a DataError
    collate = chat_collator(tokenizer)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = {key: value.to(device) for key, value in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]  # a token is predicted from the ones before it
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum"
            )
            total += float(losses)
            tokens += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / tokens
