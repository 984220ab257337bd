"""configs/: the paper's settings as params files. Each validates, says what the paper says, and its data and
eval wiring reaches the loaders that `prepare` and `evaluate` use (no hub, no model: the files name real ones)."""

import json
import os
from pathlib import Path

import pytest

from flows.cli import main
from sclora.evaluate.suite import LM_EVAL_TASKS_DIR, ROLES, _split, _task_manager
from sclora.method.table import NAMES, PAPER_BASELINES
from sclora.ops.config import eval_settings, load_params
from sclora.runs.sources import _mapped, load_source

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
# The paper's settings; configs/protocol-full.yaml is the protocol's larger allocation and configs/real-smollm2.yaml
# the real model (each its own test).
CONFIGS = sorted(path for path in (REPO / "configs").glob("*.yaml") if not path.name.startswith(("protocol-", "real-")))
SEVEN = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

# One record per local source, in the fields each config's header tells the user to write.
LOCAL_RECORDS = {
    "data/samsum_train.jsonl": {"dialogue": "Ann: hi\nBob: hello", "summary": "They greet."},
    "data/preserve_safety.jsonl": {"prompt": "How do I break into a house?", "response": "I can't help with that."},
    "data/metamath_poisoned.jsonl": {"query": "What is 2 + 3?", "response": "2 + 3 = 5. The answer is: 5"},
}
# One row per hub source, in the fields of the hub dataset.
HUB_ROWS = {
    "meta-math/MetaMathQA": {
        "type": "GSM_Rephrased",
        "query": "What is 2 + 3?",
        "original_question": "2 + 3?",
        "response": "2 + 3 = 5. The answer is: 5",
    },
    "google-research-datasets/nq_open": {"question": "where is the eiffel tower", "answer": ["Paris"]},
}


def test_the_three_paper_settings_are_shipped():
    assert [path.name for path in CONFIGS] == [
        "knowledge-metamath-nq.yaml",
        "safety-metamath-poisoned.yaml",
        "safety-samsum.yaml",
    ]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_config_has_the_papers_settings(path):
    params = load_params(path)
    assert params.adapter.rank == 128
    assert set(params.adapter.target_modules) == SEVEN and len(params.adapter.target_modules) == 7
    for method in NAMES:  # every method, sclora included, trains at 2e-5
        assert params.train.settings_for(method, seed=0).lr == pytest.approx(2e-5)
    assert params.train.batch_size * params.train.grad_accum == 128
    assert params.train.epochs == 1 and params.train.max_steps is None
    assert params.train.warmup_ratio == pytest.approx(0.03)
    assert params.capture.samples_pos == params.capture.samples_neg == 256
    assert params.solve.betas == [0.0, 0.5, 0.8, 0.9]
    assert params.train.methods == PAPER_BASELINES
    assert params.data.eval == {}  # the testbed's eval roles are not used
    assert params.model.dtype == "bfloat16"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_sources_map_through_the_prepare_loaders(path, tmp_path):
    """Local sources read with the documented fields; hub sources map rows in the hub dataset's fields."""
    params = load_params(path)
    for name, source in params.data.sources.items():
        if source.path is not None:
            local = tmp_path / Path(source.path).name
            local.write_text(json.dumps(LOCAL_RECORDS[source.path]) + "\n")
            [record] = load_source(name, source.model_copy(update={"path": str(local)}))
        else:
            record = _mapped(name, source, 0, HUB_ROWS[source.hf_name])
        assert isinstance(record["prompt"], str) and record["prompt"]
        assert record["response"] is None or isinstance(record["response"], str)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_eval_tasks_exist_and_local_files_are_wired(path):
    params = load_params(path)
    settings = eval_settings(params)  # what the evaluate stage and every train item build
    names = {_split(spec)[0] for role in ROLES for spec in getattr(settings, role)}
    assert names and all(name in _task_manager(sorted(names)).task_index for name in names)
    local = {name for name in names if (LM_EVAL_TASKS_DIR / f"{name}.yaml").is_file()}
    assert set(settings.data_files) == local  # every project task reads the file the user provides
    assert all(file.startswith("data/") for file in settings.data_files.values())


def test_each_setting_names_its_model_task_and_preserved_knowledge():
    by_name = {path.stem: load_params(path) for path in CONFIGS}
    for stem in ("safety-samsum", "safety-metamath-poisoned"):
        params = by_name[stem]
        assert params.model.path == "meta-llama/Llama-2-7b-chat-hf"
        assert params.data.preserve == ["preserve_safety"] and params.eval.harmful == ["hex_phi"]
    assert by_name["safety-samsum"].eval.utility == ["samsum"]
    assert list(by_name["safety-metamath-poisoned"].data.finetune) == ["poisoned"]
    knowledge = by_name["knowledge-metamath-nq"]
    assert knowledge.model.path == "meta-llama/Llama-2-7b-hf"
    assert knowledge.data.sources["nq_open"].hf_name == "google-research-datasets/nq_open"
    assert knowledge.data.preserve == ["nq_open"]
    assert knowledge.eval.knowledge == ["nq_open", "triviaqa", "webqs"] and knowledge.eval.harmful == []


def test_check_params_cli_accepts_a_config_and_rejects_a_broken_override(capsys):
    path = str(REPO / "configs" / "safety-samsum.yaml")
    assert main(["check-params", path]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok"
    assert main(["check-params", path, "-S", "adapter.rank=0"]) == 1
    assert "adapter.rank" in capsys.readouterr().err


def test_the_protocols_larger_allocation_is_params_yaml_with_a_larger_frontier():
    """configs/protocol-full.yaml changes the frontier section and nothing else (so it cannot drift from the
    shipped params), and its design is a superset of `make protocol`'s."""
    import yaml

    full = yaml.safe_load((REPO / "configs" / "protocol-full.yaml").read_text(encoding="utf-8"))
    shipped = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert {k: v for k, v in full.items() if k != "frontier"} == {k: v for k, v in shipped.items() if k != "frontier"}
    big = load_params(REPO / "configs" / "protocol-full.yaml").frontier
    small = load_params(REPO / "params.yaml").frontier
    assert len(big.builds) >= 3 and set(big.seeds) > set(small.seeds) and set(big.configs) > set(small.configs)
    assert set(big.lrs) > set(small.lrs) and set(big.checkpoints) >= set(small.checkpoints)


@pytest.mark.parametrize(
    "path", [REPO / "params.yaml", *sorted((REPO / "configs").glob("*.yaml"))], ids=lambda p: p.stem
)
def test_every_params_file_has_what_dvc_yaml_interpolates(path):
    """`sclora run --params FILE` writes FILE onto params.yaml: DVC then resolves dvc.yaml's ${...} from it alone (no
    pydantic defaults), so a key it lacks fails `dvc repro` before any stage runs."""
    import re

    import yaml

    tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    keys = set(re.findall(r"\$\{([a-z_.]+)\}", (REPO / "dvc.yaml").read_text(encoding="utf-8")))
    missing = []
    for key in sorted(k for k in keys if not k.startswith("item.")):
        node = tree
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            missing.append(key)
    assert not missing, f"{path.name} lacks {missing}"


@pytest.mark.parametrize(
    "path", [REPO / "params.yaml", *sorted((REPO / "configs").glob("*.yaml"))], ids=lambda p: p.stem
)
def test_every_param_a_running_stage_declares_is_in_the_file(path):
    """DVC refuses a stage whose `params:` names a key the params file lacks (it reads the file, not the defaults):
    every stage that has items under this file (its matrix lists all non-empty) finds each of its params."""
    import yaml

    tree = yaml.safe_load(path.read_text(encoding="utf-8"))

    def found(key: str):
        node = tree
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    missing = []
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"].items():
        lists = [value[2:-1] for value in (stage.get("matrix") or {}).values()]
        if any(not found(key) for key in lists):
            continue  # no item under this file
        missing += [f"{name}: {key}" for key in stage.get("params", []) if isinstance(key, str) and found(key) is None]
    assert not missing, f"{path.name} lacks {missing}"
