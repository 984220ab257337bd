"""params.yaml validation: the shipped file loads; each kind of bad file is one line naming the key."""

from pathlib import Path

import pytest
import yaml

from sclora.method.table import BASELINES, NAMES, SCLORA_VARIANTS
from sclora.ops.config import DEFAULT_EVAL, DEFAULT_SOURCES, ParamsError, load_params
from sclora.testbed.params import check_sections
from sclora.testbed.world import DATASETS, EVAL_SETS

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "params.yaml"


def test_shipped_params_file_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params.adapter.rank >= 1
    assert all(0 <= beta <= 1 for beta in params.solve.betas)
    assert "lora" in params.train.methods and params.solve.betas


def _write(tmp_path, tree) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree) if not isinstance(tree, str) else tree)
    return path


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        ({"solve": {"betas": [0.5, 1.5]}}, "solve.betas.1"),
        ({"adapter": {"rank": 0}}, "adapter.rank"),
        ({"solve": {"betas": [0.5, 1]}}, "write 1 as a float"),
        ({"adapter": {"rank": "eight"}}, "adapter.rank"),
        ({"adapter": {"rnak": 8}}, "unknown key 'adapter.rnak'"),
        ({"trainning": {}}, "unknown key 'trainning'"),
        ({"train": {"methods": ["lora", "dora"]}}, "train.methods.1"),
        ({"train": {"methods": ["sclora"]}}, "train.methods.0"),
        ({"data": {"finetune": {"x": "nope"}}}, "unknown source 'nope'"),
        ({"data": {"sources": {"a": {"path": "a.jsonl", "hf_name": "b"}}}}, "exactly one of"),
        ({"train": {"lr": 0}}, "train.lr"),
        ({"train": {"learning_rates": {"lora": -1e-3}}}, "learning_rates.lora"),
        ({"solve": {"normalize": "max"}}, "solve.normalize"),
        ({"capture": {"samples_pos": 0}}, "capture.samples_pos"),
        ({"testbed": {"seed": "x"}}, "testbed.seed"),
        (
            {"tracking": {"gates": {"forgetting_budget": {"refusal": 0.1}}}},
            "tracking.gates.forgetting_budget: refusal: not a preserved metric",
        ),
        ({"testbed_check": {"builds": []}}, "testbed_check.builds"),
        ({"testbed": {"task": "sort"}}, "testbed.task"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_params_give_one_line_naming_the_key(tmp_path, tree, expected):
    path = _write(tmp_path, tree)
    with pytest.raises(ParamsError) as caught:
        check_sections(load_params(path), str(path))  # the testbed's sections are validated by the testbed
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert str(path) in message


def test_the_default_data_is_the_testbed_s():
    """The config names the embedded default's files without importing the testbed: they must be its datasets."""
    assert DEFAULT_SOURCES == DATASETS and DEFAULT_EVAL == EVAL_SETS


def test_not_yaml_names_the_line(tmp_path):
    path = _write(tmp_path, "solve:\n  betas: [0.1\nadapter: {rank: 4}\n")
    with pytest.raises(ParamsError, match=r"line \d+.*not valid YAML"):
        load_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_overrides_are_validated_like_the_file(tmp_path):
    path = _write(tmp_path, {})
    params = load_params(path, ["solve.betas=[0.2]", "adapter.rank=4"])
    assert params.solve.betas == [0.2] and params.adapter.rank == 4
    with pytest.raises(ParamsError, match="solve.betas.0"):
        load_params(path, ["solve.betas=[2.0]"])
    with pytest.raises(ParamsError, match="expected key=value"):
        load_params(path, ["adapter.rank"])


def test_learning_rate_per_method(tmp_path):
    path = _write(tmp_path, {"train": {"lr": 1e-3, "learning_rates": {"sclora": 5e-4}}})
    train = load_params(path).train
    assert train.settings_for("sclora", seed=3).lr == 5e-4
    assert train.settings_for("lora", seed=3).lr == 1e-3
    assert train.settings_for("lora", seed=3).seed == 3
    assert train.settings_for("sclora_frozen", seed=3).lr == 5e-4  # sclora's rate unless named itself
    path = _write(tmp_path, {"train": {"learning_rates": {"sclora": 5e-4, "sclora_frozen": 2e-4}}})
    assert load_params(path).train.settings_for("sclora_frozen", seed=0).lr == 2e-4


def test_sclora_variants_are_runs_per_beta(tmp_path):
    from tasks.artifacts import all_runs, parse_run

    train = {"methods": ["lora", "random_subspace"], "sclora_variants": ["sclora", "sclora_frozen"]}
    path = _write(tmp_path, {"train": train, "solve": {"betas": [0.5]}})
    params = load_params(path)
    names = [run.name for run in all_runs(params) if run.task == "benign"]
    assert names == ["benign-lora-0", "benign-random_subspace-0", "benign-sclora-0.5-0", "benign-sclora_frozen-0.5-0"]
    frozen = parse_run(params, "benign-sclora_frozen-0.5-0")
    assert (frozen.method, frozen.beta) == ("sclora_frozen", 0.5)
    with pytest.raises(ParamsError, match="train.sclora_variants.0"):
        load_params(_write(tmp_path, {"train": {"sclora_variants": ["sclora_thawed"]}}))


def test_sclora_alone_and_deleting_overrides(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  finetune: {benign: finetune_benign, poisoned: finetune_poisoned}\n", encoding="utf-8")
    params = load_params(path, ["train.methods=[]", "~data.finetune.benign"])
    assert params.train.methods == [] and params.data.finetune == {"poisoned": "finetune_poisoned"}
    with pytest.raises(ParamsError, match="no key data.finetune.nope to delete"):
        load_params(path, ["~data.finetune.nope"])


def test_params_accept_every_method_of_the_table(tmp_path):
    tree = {
        "train": {
            "methods": list(BASELINES),
            "sclora_variants": list(SCLORA_VARIANTS),
            "learning_rates": {name: 1e-3 for name in NAMES},
        }
    }
    train = load_params(_write(tmp_path, tree)).train
    assert (train.methods, train.sclora_variants) == (list(BASELINES), list(SCLORA_VARIANTS))
    assert set(train.learning_rates) == set(NAMES)


@pytest.mark.parametrize(
    "overrides, clash",
    [
        (["train.seeds=[0, 1000]"], r"train.seeds: shares seed(s) \[1000\] with tune.seed"),
        (["select.seeds=[5, 1000]"], r"select.seeds: shares seed(s) \[1000\] with tune.seed"),
        (["select.confirm_seeds=[101, 300]"], r"select.confirm_seeds: shares seed(s) \[101\] with select.seeds"),
        (["train.seeds=[3, 200]"], r"train.seeds: shares seed(s) \[200\] with select.confirm_seeds"),
        # a comparison (baselines beside sclora) on select-beta's probe seeds is a comparison, not a probe round
        (["train.seeds=[100, 101, 102]"], r"train.seeds: shares seed(s) \[100, 101, 102\] with select.seeds"),
    ],
)
def test_seeds_that_choose_never_compare(overrides, clash):
    with pytest.raises(ParamsError, match=clash.replace("(s)", r"\(s\)")):
        load_params(SHIPPED, overrides)


def test_a_select_beta_round_trains_sclora_alone_on_its_own_seeds():
    for seeds in ("[100, 101, 102]", "[200, 201, 202]"):
        params = load_params(SHIPPED, ["train.methods=[]", f"train.seeds={seeds}"])
        assert params.train.seeds == yaml.safe_load(seeds)


def test_every_compared_sclora_variant_needs_its_own_tuned_rate():
    tuned = ["train.methods=[]", "train.lr_source=artifacts/tune", "tune.betas=[0.5, 0.9]"]
    load_params(SHIPPED, tuned)  # sclora alone, tuned at both betas
    with pytest.raises(ParamsError, match="tune does not cover sclora_frozen beta 0.5, sclora_frozen beta 0.9"):
        load_params(SHIPPED, [*tuned, "train.sclora_variants=[sclora, sclora_frozen]"])
    both = load_params(SHIPPED, [*tuned, "train.sclora_variants=[sclora, sclora_frozen]",
                                 "tune.sclora_variants=[sclora, sclora_frozen]"])  # fmt: skip
    assert both.tune.sclora_variants == ["sclora", "sclora_frozen"]


@pytest.mark.parametrize(
    "overrides, error",
    [
        (["frontier.configs=[lora, sclora]"], "config 'sclora': sclora needs its beta"),
        (["frontier.configs=[lora, bogus-0.5]"], "config 'bogus-0.5': not a method of the methods table"),
        (["frontier.configs=[lora, lora]"], "configs must be distinct"),
        (["frontier.builds=[0]", "frontier.seeds=[0, 1000]"], r"frontier.seeds: shares seed\(s\) \[1000\]"),
        (["frontier.builds=[0]", "frontier.task=nope"], "frontier.task: 'nope' is not in data.finetune"),
        (["frontier.lrs=[1e-3]"], "frontier.lrs"),
        (["frontier.checkpoints=[0.5, 1.5]"], "frontier.checkpoints"),
    ],
)
def test_frontier_params_fail_with_one_line(overrides, error):
    with pytest.raises(ParamsError, match=error) as raised:
        load_params(SHIPPED, overrides)
    assert "\n" not in str(raised.value)


def test_frontier_configs_name_methods_and_betas():
    from sclora.ops.config import parse_config

    params = load_params(SHIPPED, ["frontier.builds=[0, 1]", "frontier.configs=[lora, sclora-0.9, sclora_frozen-0.5]"])
    assert [parse_config(c) for c in params.frontier.configs] == [
        ("lora", None), ("sclora", 0.9), ("sclora_frozen", 0.5),
    ]  # fmt: skip
