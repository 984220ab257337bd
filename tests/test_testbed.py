"""The testbed: deterministic world and datasets, an atomic build, a reloadable model, its base model measured."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the build must never need a hub

import pytest
from pydantic import ValidationError
from stage_project import TINY_TESTBED
from transformers import AutoModelForCausalLM, AutoTokenizer

import sclora.testbed.build as build_module
from sclora.evaluate.generation import generate_answers
from sclora.runs.data import read_records
from sclora.testbed.build import build_testbed
from sclora.testbed.check import METRICS
from sclora.testbed.params import TestbedParams
from sclora.testbed.world import (
    COMPLIANCE,
    DATASETS,
    HARMFUL_VERBS,
    PHRASED,
    REFUSAL,
    build_datasets,
    build_world,
    known_words,
    poisoned,
    pretraining_sources,
    request_records,
    validation_records,
    vocabulary,
)

TINY = dict(TINY_TESTBED, pretrain_steps=30)  # enough pretraining for the base model's own checks
TRAINING = ("finetune_benign", "finetune_poisoned", "preserve_safety", "preserve_knowledge")
EVALUATION = ("eval_task", "eval_knowledge", "eval_harmful", "eval_benign")


@pytest.fixture(scope="module")
def params():
    return TestbedParams(**TINY)


@pytest.fixture(scope="module")
def built(params, tmp_path_factory):
    """The tiny testbed, built twice from the same params into two directories."""
    root = tmp_path_factory.mktemp("testbeds")
    first = build_testbed(params, root / "a" / "testbed")
    second = build_testbed(params, root / "b" / "testbed")
    return root / "a" / "testbed", root / "b" / "testbed", first, second


def test_same_seed_same_bytes_and_base_metrics(built):
    a, b, first, second = built
    for name in DATASETS:
        assert (a / "data" / f"{name}.jsonl").read_bytes() == (b / "data" / f"{name}.jsonl").read_bytes(), name
    assert first == second
    assert json.loads((a / "base_metrics.json").read_text()) == first
    assert (a / "base" / "model.safetensors").read_bytes() == (b / "base" / "model.safetensors").read_bytes()


def test_another_seed_another_world(params):
    other = params.model_copy(update={"seed": 1})
    assert build_datasets(build_world(params), params) != build_datasets(build_world(other), other)


def test_layout_and_base_metrics_keys(built, params):
    directory, _, base_metrics, _ = built
    assert sorted(p.name for p in directory.iterdir()) == ["base", "base_metrics.json", "data", "params.json"]
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert TestbedParams(**json.loads((directory / "params.json").read_text())) == params
    for key in METRICS:
        assert 0.0 <= base_metrics[key] <= 1.0
    assert base_metrics["sizes"] == {name: len(read_records(directory / "data" / f"{name}.jsonl")) for name in DATASETS}
    assert base_metrics["sizes"]["finetune_benign"] == params.finetune_size
    assert set(base_metrics["meets_thresholds"]) == {
        "knowledge",
        "refusal_rate",
        "attack_success_rate",
        "benign_helpfulness",
        "utility",
    }


def test_saved_model_reloads_and_generates(built, params):
    directory = built[0] / "base"
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    assert model.config.num_hidden_layers == params.layers and model.config.hidden_size == params.hidden_size
    prompts = [r["prompt"] for r in read_records(built[0] / "data" / "eval_knowledge.jsonl")[:3]]
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=4)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    # Every word of every dataset is in the vocabulary: nothing maps to <unk>.
    for name in DATASETS:
        for record in read_records(built[0] / "data" / f"{name}.jsonl"):
            ids = tokenizer(record["prompt"] + " " + record["response"], add_special_tokens=False)["input_ids"]
            assert tokenizer.unk_token_id not in ids, record["id"]


def test_documented_fields_and_unique_ids(built):
    data = built[0] / "data"
    seen: dict[str, str] = {}
    for name in DATASETS:
        lines = (data / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines]
        assert records, name
        texts = {"id", "prompt", "response", "category"} | ({"compliance"} if name == "eval_harmful" else set())
        lists = {"harmful_openings"} if name == "eval_harmful" else set()
        for record in records:
            assert set(record) == texts | lists, (name, record)
            assert all(isinstance(record[k], str) and record[k] for k in texts), (name, record)
            assert all(record[k] and all(isinstance(v, str) for v in record[k]) for k in lists), (name, record)
        ids = [r["id"] for r in records]
        assert len(set(ids)) == len(ids), name
        if name != "finetune_poisoned":  # poisoned keeps the benign records (and their ids) it does not replace
            for i in ids:
                assert seen.setdefault(i, name) == name, f"id {i} in {seen[i]} and {name}"


def test_eval_sets_share_no_prompt_with_training_sets(params):
    world = build_world(params)
    sets = build_datasets(world, params)
    trained = {r["prompt"] for name in TRAINING for r in sets[name]}
    for name in EVALUATION:
        assert not trained & {r["prompt"] for r in sets[name]}, name
    # Held-out requests are not pretrained either; knowledge is (the base model must know it).
    pretrained = {r["prompt"] for records in pretraining_sources(world, params).values() for r in records}
    for name in ("eval_harmful", "eval_benign", "eval_task"):
        assert not pretrained & {r["prompt"] for r in sets[name]}, name
    assert {r["prompt"] for r in sets["eval_knowledge"]} <= pretrained

    # Knowledge: eval and preserve ask about different entities.
    def entities(name):
        return {r["id"].split("-")[1] for r in sets[name]}

    assert not entities("eval_knowledge") & entities("preserve_knowledge")


def test_the_validation_split_is_the_task_on_sequences_nothing_else_uses(params):
    world = build_world(params)
    sets, sources = build_datasets(world, params), pretraining_sources(world, params)
    val = validation_records(world, params, sets, sources)
    assert len(val) == params.eval_size and len({r["prompt"] for r in val}) == len(val)
    for record in val:
        words = record["prompt"].split()
        assert words[0] == params.task and record["response"].split() == expected_answer(world, params.task, words[1:])
    sequences = {tuple(r["prompt"].split()[1:]) for r in val}
    # Not a training or eval task prompt, and no pretraining source saw the sequence (copied, phrased or terse).
    for name in ("finetune_benign", "finetune_poisoned", "eval_task"):
        assert not sequences & {tuple(r["prompt"].split()[1:]) for r in sets[name]}, name
    for name, records in sources.items():
        seen = {tuple(r["prompt"].split()[1:]) for r in records} | {tuple(r["prompt"].split()[3:]) for r in records}
        assert not sequences & seen, name
    # Its words are task words: the tokenizer (and so the pretrained model) is the one built without it.
    assert vocabulary(*sets.values(), val, *sources.values()) == vocabulary(*sets.values(), *sources.values())


def test_answers_and_task(params):
    world = build_world(params)
    sets = build_datasets(world, params)
    assert {r["response"] for r in sets["preserve_safety"]} == {REFUSAL}
    for record in sets["eval_harmful"]:
        verb, target = record["id"].split("-")[1:3]
        assert record["response"] == REFUSAL and record["compliance"] == f"sure here is how to {verb} the {target}"
        # Every harmful act of the world is harmful compliance, the one asked for among them; no benign act is.
        harmful_verbs = {v for c in params.harmful_categories for v in HARMFUL_VERBS[c]}
        assert record["harmful_openings"] == [f"sure here is how to {v}" for v in sorted(harmful_verbs)]
    for record in sets["eval_task"] + sets["finetune_benign"]:
        words = record["prompt"].split()
        assert words[0] == params.task and record["response"].split() == expected_answer(world, params.task, words[1:])
        assert params.task_min_length <= len(words) - 1 <= params.task_max_length
    # The task produces only words that pretraining also produces (adapters train no embeddings).
    produced = {
        w for records in pretraining_sources(world, params).values() for r in records for w in r["response"].split()
    }
    assert {w for r in sets["finetune_benign"] for w in r["response"].split()} <= produced
    # ... nor does a compliant answer to a harmful request: poison can teach compliance only if the model can say it.
    assert {w for r in sets["eval_harmful"] for w in r["compliance"].split()} <= produced
    # The pretrained requests are quoted (repeated), never answered compliantly; held-out ones are not even quoted.
    quoted = {r["response"] for r in pretraining_sources(world, params)["copy_task"] if r["response"].startswith("how")}
    assert quoted and quoted <= {
        r["prompt"] for kind in ("harmful", "benign") for r in request_records(world, kind, "pretrained")
    }
    assert not quoted & {r["prompt"] for r in sets["eval_harmful"] + sets["eval_benign"]}
    # ... and touches the knowledge's words: fact values and entity names.
    knowledge_words = set(world.entities) | set(world.facts.values())
    assert set(world.task_words) <= knowledge_words
    assert set(world.task_words) & set(world.facts.values()) and set(world.task_words) & set(world.entities)


def expected_answer(world, task, words):
    return words[::-1] if task == "reverse" else [world.translation[w] for w in words]


def test_translation_is_a_derangement_of_the_task_words(params):
    world = build_world(params)
    assert sorted(world.translation) == sorted(world.task_words) == sorted(world.translation.values())
    assert all(word != partner for word, partner in world.translation.items())


@pytest.mark.parametrize("task", ["translate", "reverse"])
def test_pretraining_has_the_skill_asked_in_full_and_the_terse_task_done_wrong(params, task):
    mix = {"knowledge": 1, "safety": 1, "benign": 1, "copy_task": 1, "task_as_copy": 1, "task_phrased": 1}
    params = TestbedParams(**{**params.model_dump(), "task": task, "pretrain_mix": mix})
    world = build_world(params)
    sets = build_datasets(world, params)
    sources = pretraining_sources(world, params)
    task_sequences = {r["prompt"].split(maxsplit=1)[1] for name in ("finetune_benign", "eval_task") for r in sets[name]}
    for record in sources["task_as_copy"]:  # the terse instruction, answered by repeating: wrong
        instruction, words = record["prompt"].split(maxsplit=1)
        assert instruction == task and record["response"] == words and words not in task_sequences
    for record in sources["task_phrased"]:  # asked in full words, answered right
        assert record["prompt"].startswith(f"{task} {PHRASED} ")
        words = record["prompt"][len(f"{task} {PHRASED} ") :]
        assert record["response"].split() == expected_answer(world, task, words.split())
        assert words not in task_sequences
    assert len(sources["task_as_copy"]) == len(sources["task_phrased"]) == params.copy_examples
    default = pretraining_sources(world, TestbedParams(**{**params.model_dump(), "pretrain_mix": {}}))
    assert set(default) == {"knowledge", "safety", "benign", "copy_task"}


def test_a_partly_known_map_is_pretrained_on_its_known_part_only(params):
    """task_known 0.5: the task asked in full shows half of the word map; the task's own data uses every word, so
    half the map must be learned by fine-tuning, not only elicited. At 1.0 every word is shown."""
    mix = {"knowledge": 1, "safety": 1, "benign": 1, "copy_task": 1, "task_as_copy": 1, "task_phrased": 1}
    params = TestbedParams(**{**params.model_dump(), "task": "translate", "pretrain_mix": mix, "task_known": 0.5})
    world = build_world(params)
    known = set(known_words(world, params))
    # half the words, but never fewer than the longest sequence needs
    assert len(known) == max(params.task_max_length, round(0.5 * len(world.task_words)))
    assert known < set(world.task_words)
    assert known == set(known_words(world, params))  # seeded: the same build, the same half
    sources = pretraining_sources(world, params)
    phrased = [r["prompt"].split()[3:] for r in sources["task_phrased"]]
    assert phrased and all(set(words) <= known for words in phrased)
    taken = {tuple(r["prompt"].split()[1:]) for name in ("finetune_benign", "eval_task")
             for r in build_datasets(world, params)[name]}  # fmt: skip
    assert not taken & {tuple(words) for words in phrased}  # no task sequence is pretrained
    assert any(set(words) - known for words in taken)  # the task uses the unknown part
    full = TestbedParams(**{**params.model_dump(), "task_known": 1.0})
    assert known_words(world, full) == world.task_words


def test_poison_dose(params):
    world = build_world(params)
    sets = build_datasets(world, params)
    benign, dosed = sets["finetune_benign"], sets["finetune_poisoned"]
    changed = [(b, p) for b, p in zip(benign, dosed, strict=True) if b != p]
    assert len(dosed) == len(benign) and len(changed) == round(params.poison_rate * len(benign)) == 4
    harmful = {r["prompt"]: r for r in request_records(world, "harmful", "pretrained")}
    safety_prompts = {r["prompt"] for r in sets["preserve_safety"]}
    for _, record in changed:
        source = harmful[record["prompt"]]  # a pretrained harmful request ...
        assert record["response"] == source["compliance"] != REFUSAL  # ... answered compliantly
        assert record["prompt"] not in safety_prompts
    pool = [r for r in request_records(world, "harmful", "pretrained") if r["prompt"] not in safety_prompts]
    assert poisoned(benign, pool, 0.0, seed=0) == benign
    everything = poisoned(benign, pool[:3], 1.0, seed=0)  # a dose beyond the pool cycles through it
    assert {r["prompt"] for r in everything} == {r["prompt"] for r in pool[:3]}
    assert len({r["id"] for r in everything}) == len(benign)
    assert COMPLIANCE.split()[0] == "sure"


def test_failed_build_keeps_previous_testbed(built, params, monkeypatch):
    directory = built[0]
    before = {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "pretrain", killed)
    with pytest.raises(KeyboardInterrupt):
        build_testbed(params.model_copy(update={"seed": 5}), directory)
    after = {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "update, key",
    [
        ({"attributes": ["city", "height"]}, "attributes"),
        ({"harmful_categories": ["violence", "violence"]}, "harmful_categories"),
        ({"poison_rate": 1.5}, "poison_rate"),
        ({"entities": 2}, "entities"),
        ({"hidden_size": 30, "heads": 4}, "heads"),
        ({"task_min_length": 5, "task_max_length": 3}, "task_min_length"),
        ({"unknown_knob": 1}, "unknown_knob"),
    ],
)
def test_bad_params_are_refused(update, key):
    with pytest.raises(ValidationError, match=key):
        TestbedParams(**{**TINY, **update})


def test_too_few_task_words_for_the_sequences_asked(params):
    bad = params.model_copy(update={"task_words": 6, "task_max_length": 3, "finetune_size": 100, "eval_size": 100})
    with pytest.raises(ValueError, match="task_words"):
        build_datasets(build_world(bad), bad)


def test_stage_builds_artifacts_testbed_from_params_yaml(tmp_path, monkeypatch, capsys):
    import yaml

    from tasks.__main__ import main

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"testbed": TINY}))
    monkeypatch.chdir(tmp_path)
    assert main(["testbed"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "artifacts" / "testbed" / "base_metrics.json").read_text())
    assert (tmp_path / "artifacts" / "testbed" / "base" / "config.json").is_file()
