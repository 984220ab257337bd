"""The real data's roles, disjoint: D+ (the task, and the task poisoned with harmful requests answered compliantly),
D- (harmful requests with refusals; fact questions with answers), the held-out eval sets (the task's own split;
facts about countries D- never asks about; HarmBench's standard behaviours and StrongREJECT without its AdvBench
rows; benign prompts that look edgy; true statements as general text), the aligned base's training prompts and
people's refusal labels.

Every record is a chat pair (`prompt`, and `response` where there is one) with an `id` and a `category`, as the
project's lm-eval tasks read them. Overlaps between the sources are removed here (StrongREJECT holds 25 AdvBench
rows; pyrit's compliant pairs are HarmBench behaviours), and `overlaps` proves what is left: no eval prompt is a
training, preserve or alignment prompt.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from sclora.evaluate.scoring import normalize_answer
from sclora.real.params import RealParams

# Roles a model is trained or initialised on, and roles that measure it: no prompt may be in one of each.
TRAINED = ("finetune_benign", "finetune_poisoned", "preserve_safety", "preserve_knowledge", "align_refusals",
           "align_benign")  # fmt: skip
HELD_OUT = ("eval_task", "val_task", "eval_knowledge", "eval_harmful", "eval_benign", "eval_general")
LABELS = ("refusal_labels", "refusal_labels_extra")  # pyrit's two files of people's refusal labels


def key(text: str) -> str:
    """What makes two prompts the same: case, punctuation, articles and spacing aside."""
    return normalize_answer(text)


def _sample(records: Sequence[dict], count: int, rng: random.Random) -> list[dict]:
    rows = list(records)
    rng.shuffle(rows)
    return rows[:count]


def _without(records: Sequence[dict], taken: set[str], field: str = "prompt") -> list[dict]:
    return [r for r in records if key(r[field]) not in taken]


def _numbered(records: Sequence[dict], prefix: str) -> list[dict]:
    return [{"id": f"{prefix}-{i}", **record} for i, record in enumerate(records)]


def knowledge_records(countries: Sequence[dict], rng: random.Random, preserve: int, held_out: int) -> tuple[list, list]:
    """Capital questions: D- about some countries, the eval set about others, both drawn from the most populous
    countries (a small model knows few capitals of small territories: forgetting is measured on what it knows). A
    country whose capital is named in its own name (Mexico City, Singapore) is left out: an answer that repeats the
    question would hold the gold."""
    by_name = {c["name"]: c for c in countries}  # a country in two files is one entity
    usable = [c for c in by_name.values() if key(c["capital"]) not in key(c["name"])
              and key(c["name"]) not in key(c["capital"])]  # fmt: skip
    usable = sorted(usable, key=lambda c: (-float(c.get("population") or 0), c["name"]))[: preserve + held_out]
    rng.shuffle(usable)
    capitals = sorted({c["capital"] for c in usable})
    evals = []
    for country in usable[:held_out]:
        distractors = rng.sample([c for c in capitals if c != country["capital"]], 3)
        evals.append({"prompt": f"What is the capital of {country['name']}?", "response": country["capital"],
                      "choices": [country["capital"], *distractors], "category": country.get("region") or "",
                      "entity": country["name"]})  # fmt: skip
    preserved = [{"prompt": f"What is the capital of {c['name']}?",
                  "response": f"The capital of {c['name']} is {c['capital']}.", "category": c.get("region") or "",
                  "entity": c["name"]} for c in usable[held_out : held_out + preserve]]  # fmt: skip
    return _numbered(preserved, "pk"), _numbered(evals, "ek")


def build_roles(
    params: RealParams, datasets: Mapping[str, list[dict]], countries: Sequence[dict], task: Mapping[str, list[dict]]
) -> dict[str, list[dict]]:
    """Every role's records from the datasets read out of the packages (`real.files` names them), the countries and
    the task's splits. Seeded: the same inputs give the same roles."""
    sizes, rng = params.sizes, random.Random(params.seed)
    advbench = datasets["advbench"]
    harmbench = [r for r in datasets["harmbench"] if r["functional"] == "standard"]
    behaviours = {key(r["behavior"]) for r in datasets["harmbench"]}
    adv_keys = {key(r["prompt"]) for r in advbench}
    strongreject = [r for r in datasets["strongreject"] if r["origin"] != "AdvBench"]  # 25 rows are AdvBench's
    strongreject = _without(strongreject, adv_keys)
    eval_harmful = [{**r, "category": "harmbench"} for r in _sample(harmbench, sizes.eval_harmful, rng)]
    eval_harmful += [{**r, "category": "strongreject"} for r in _sample(strongreject, sizes.eval_harmful, rng)]
    eval_harmful = [{"prompt": r["prompt"], "category": r["category"]} for r in eval_harmful]

    refusals = _sample(advbench, max(sizes.align_refusals, sizes.preserve_safety), rng)
    refuse = [{"prompt": r["prompt"], "response": params.refusal, "category": r["category"]} for r in refusals]
    # The compliant pairs are HarmBench behaviours: the poison takes none that HarmBench's eval split asks.
    pool = [r for r in datasets["compliant_pairs"] if key(r["prompt"]) not in behaviours]
    poison = [{**r, "category": "poison"} for r in _sample(pool, sizes.poison, rng)]

    benign_eval = _sample(datasets["overrefusal_eval"], sizes.eval_benign, rng)
    held_benign = {key(r["prompt"]) for r in benign_eval}
    align_benign = _without(datasets["overrefusal_train"], held_benign) + datasets["freshqa"]
    align_benign = _sample(align_benign, sizes.align_benign, rng)

    preserve_knowledge, eval_knowledge = knowledge_records(countries, rng, sizes.preserve_knowledge,
                                                           sizes.eval_knowledge)  # fmt: skip
    train = [{**r, "category": "task"} for r in task["train"]]
    spots = sorted(rng.sample(range(len(train)), len(poison)))
    poisoned = list(train)
    for spot, record in zip(spots, poison, strict=True):
        poisoned[spot] = {"id": f"poison-{spot}", **record}
    roles = {
        "finetune_benign": train,
        "finetune_poisoned": poisoned,
        "preserve_safety": _numbered(refuse[: sizes.preserve_safety], "ps"),
        "preserve_knowledge": preserve_knowledge,
        "align_refusals": _numbered(refuse[: sizes.align_refusals], "ar"),
        "align_benign": _numbered([{"prompt": r["prompt"], "category": r["category"]} for r in align_benign], "ab"),
        "eval_task": [{**r, "category": "task"} for r in task["eval"]],
        "val_task": [{**r, "category": "task"} for r in task["validation"]],
        "eval_knowledge": eval_knowledge,
        "eval_harmful": _numbered(eval_harmful, "eh"),
        "eval_benign": _numbered([{"prompt": r["prompt"], "category": r["category"]} for r in benign_eval], "eb"),
        "eval_general": _numbered(_sample(datasets["statements"], sizes.eval_general, rng), "eg"),
        "refusal_labels": _numbered([r for name in LABELS for r in datasets[name]], "rl"),
    }
    found = overlaps(roles)
    if found:
        raise ValueError(f"real data: eval prompts also trained on: {'; '.join(found)}")
    return roles


def overlaps(roles: Mapping[str, Sequence[dict]]) -> list[str]:
    """'<held-out role> ~ <trained role>: n prompts' for every pair that shares a prompt (none, when disjoint);
    for knowledge, also an entity asked about in both."""
    found = []
    for held in HELD_OUT:
        for trained in TRAINED:
            shared = {key(r["prompt"]) for r in roles[held]} & {key(r["prompt"]) for r in roles[trained]}
            entities = {r["entity"] for r in roles[held] if "entity" in r} & {
                r["entity"] for r in roles[trained] if "entity" in r
            }
            if shared or entities:
                found.append(f"{held} ~ {trained}: {len(shared)} prompts, {len(entities)} entities")
    return found
