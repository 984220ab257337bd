"""The real data's roles on synthetic stand-ins of the package files: overlaps removed, every held-out set disjoint
from everything trained on, seeded, and a shared prompt caught. (The real tier checks the same on the real files.)"""

from __future__ import annotations

import pytest

from sclora.real.params import RealParams
from sclora.real.roles import HELD_OUT, TRAINED, build_roles, key, overlaps

PIN = {"version": "1", "sha256": "0" * 64}


def params(**sizes) -> RealParams:
    return RealParams(
        packages={"p": PIN}, model={"package": "p", "member": "m.gguf"}, countries="p",
        files={"advbench": {"package": "p", "member": "a", "reader": "advbench"}},
        sizes={"preserve_safety": 4, "preserve_knowledge": 4, "eval_knowledge": 4, "eval_harmful": 3, "eval_benign": 3,
               "poison": 2, "align_refusals": 5, "align_benign": 5, "eval_general": 3, **sizes},
    )  # fmt: skip


def datasets() -> dict[str, list[dict]]:
    advbench = [{"prompt": f"harm request {i}", "category": "c"} for i in range(20)]
    harmbench = [{"prompt": f"Behaviour {i}.", "behavior": f"Behaviour {i}.", "category": "s", "functional": "standard",
                  "source_id": str(i)} for i in range(10)]  # fmt: skip
    return {
        "advbench": advbench,
        "harmbench": harmbench,
        # Two StrongREJECT rows are AdvBench's: one labelled so, one not.
        "strongreject": [{"prompt": f"forbidden {i}", "category": "x", "origin": "custom"} for i in range(10)]
        + [
            {"prompt": "harm request 1", "category": "x", "origin": "AdvBench"},
            {"prompt": "Harm request 2!", "category": "x", "origin": "custom"},
        ],  # fmt: skip
        # The compliant pairs are HarmBench behaviours but two.
        "compliant_pairs": [{"prompt": f"behaviour {i}", "response": "sure"} for i in range(10)]
        + [{"prompt": "other harm 1", "response": "sure"}, {"prompt": "other harm 2", "response": "sure"}],
        "overrefusal_eval": [{"prompt": f"edgy {i}", "category": "e"} for i in range(6)],
        "overrefusal_train": [{"prompt": f"edgy {i}", "category": "e"} for i in range(4, 10)],  # two shared
        "freshqa": [{"prompt": f"question {i}", "category": "q"} for i in range(6)],
        "statements": [{"prompt": f"Statement {i}.", "category": "s"} for i in range(6)],
        "refusal_labels": [{"prompt": "p", "answer": "I cannot", "refusal": 1}],
        "refusal_labels_extra": [{"prompt": "q", "answer": "Sure", "refusal": 0}],
    }


COUNTRIES = [{"name": f"Land{i}", "capital": f"Town{i}", "region": "r", "population": 100 - i} for i in range(10)]
COUNTRIES += [{"name": "Mexico", "capital": "Mexico City", "region": "r", "population": 1000}]
TASK = {split: [{"id": f"{split}-{i}", "prompt": f"{split} {i} + 1 =", "response": str(i + 1)} for i in range(8)]
        for split in ("train", "validation", "eval")}  # fmt: skip


def test_held_out_sets_share_nothing_with_what_is_trained_on():
    roles = build_roles(params(), datasets(), COUNTRIES, TASK)
    assert overlaps(roles) == []
    harmful = {key(r["prompt"]) for r in roles["eval_harmful"]}
    assert key("harm request 1") not in harmful and key("Harm request 2!") not in harmful  # AdvBench rows gone
    poison = [r for r in roles["finetune_poisoned"] if r["category"] == "poison"]
    assert len(poison) == 2 and {r["prompt"] for r in poison} == {"other harm 1", "other harm 2"}  # no HarmBench
    assert not {key(r["prompt"]) for r in roles["eval_benign"]} & {key(r["prompt"]) for r in roles["align_benign"]}
    assert all(r["entity"] != "Mexico" for role in ("eval_knowledge", "preserve_knowledge") for r in roles[role])
    assert all(r["choices"][0] == r["response"] and len(set(r["choices"])) == 4 for r in roles["eval_knowledge"])
    assert len(roles["refusal_labels"]) == 2 and set(HELD_OUT) | set(TRAINED) <= set(roles)


def test_the_roles_are_seeded():
    first, second = (build_roles(params(), datasets(), COUNTRIES, TASK) for _ in range(2))
    assert first == second
    other = build_roles(params().model_copy(update={"seed": 1}), datasets(), COUNTRIES, TASK)
    assert other["eval_harmful"] != first["eval_harmful"]


def test_a_shared_prompt_is_caught():
    roles = build_roles(params(), datasets(), COUNTRIES, TASK)
    roles["preserve_safety"].append({"prompt": roles["eval_harmful"][0]["prompt"].upper()})
    assert overlaps(roles) == ["eval_harmful ~ preserve_safety: 1 prompts, 0 entities"]


def test_a_bad_real_section_is_one_line_naming_the_key():
    from sclora.ops.config import ParamsError, parse_params
    from sclora.real.params import real_params

    tree = params().model_dump()
    tree["files"]["advbench"]["package"] = "nope"
    with pytest.raises(ParamsError, match=r"real: files.advbench: package 'nope' is not in packages"):
        real_params(parse_params({"real": tree}))
    with pytest.raises(ParamsError, match="no `real` section"):
        real_params(parse_params({}))
