"""The fine-tuning task: reasoning-gym's procedural generator (Apache-2.0), run offline from a seed.

Each split is its own generator seeded apart (train, validation, eval), and an item whose question an earlier
split already holds is dropped from the later one, so the splits share no question. The held-out splits hold each
question once; the training split may repeat one, as a generator with a small space of questions does. A record is
the chat pair the pipeline trains on: the question as the prompt, the answer alone as the response.
"""

from __future__ import annotations

from sclora.evaluate.scoring import normalize_answer
from sclora.real.params import TaskSource

SPLITS = ("train", "validation", "eval")
SEED_STRIDE = 10**6


def task_splits(task: TaskSource) -> dict[str, list[dict]]:
    """split -> records (id, prompt, response), disjoint in their questions."""
    import reasoning_gym  # imported here: it loads every one of its ~100 generators

    seen: set[str] = set()
    out = {}
    for offset, split in enumerate(SPLITS):
        size = getattr(task, split)
        # More items than asked: the duplicates of earlier splits are dropped below.
        # reasoning-gym draws item i from seed + i: seeds a split apart would share items, so they are far apart.
        seed = task.seed + offset * SEED_STRIDE
        items = reasoning_gym.create_dataset(task.name, size=8 * size + 64, seed=seed, **task.config)
        records, earlier = [], set(seen)
        for index, item in enumerate(items):
            key = normalize_answer(item["question"])
            if key in earlier or (split != "train" and key in seen):
                continue
            seen.add(key)
            records.append({"id": f"{split}-{index}", "prompt": item["question"], "response": str(item["answer"])})
            if len(records) == size:
                break
        if len(records) < size:
            raise ValueError(f"real.task: {task.name} gave only {len(records)} distinct {split} items of {size}")
        out[split] = records
    return out
