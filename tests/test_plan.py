"""The plan stage: one file per run with what decides it, so a new seed or one method's rate touches only its runs."""

from pathlib import Path

import pytest

from sclora.ops.config import load_params
from tasks.artifacts import PLAN, all_runs, check_plan
from tasks.plan import run as plan

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    repo_params = REPO / "params.yaml"
    (tmp_path / "params.yaml").write_text(repo_params.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def contents() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(PLAN.glob("*.json"))}


def test_a_new_seed_adds_files_and_one_rate_changes_only_its_method(workspace):
    plan(load_params("params.yaml"))
    before = contents()
    # Only CorDA reads the capture: its plan holds the capture's shard hashes, a data-free baseline's does not.
    assert b'"capture"' in before["benign-corda_ipm-0.json"]
    assert b'"capture"' not in before["benign-lora-0.json"]
    assert set(before) == {f"{spec.name}.json" for spec in all_runs(load_params("params.yaml"))}
    plan(load_params("params.yaml", ["train.seeds=[0,1]"]))
    after = contents()
    assert {name: after[name] for name in before} == before  # every seed-0 file byte-identical
    assert all(name.endswith("-1.json") for name in set(after) - set(before))
    plan(load_params("params.yaml", ["train.learning_rates.pissa=3e-3"]))
    changed = {name for name, data in contents().items() if data != before[name]}
    assert changed == {"benign-pissa-0.json", "poisoned-pissa-0.json"}
    assert set(contents()) == set(before)  # the seed-1 files of the previous plan are gone


def test_a_stale_plan_fails_the_train_item_and_a_missing_one_does_not(workspace):
    params = load_params("params.yaml")
    spec = all_runs(params)[0]
    check_plan(params, spec)  # no plan yet (the stage run by hand): nothing to check
    plan(params)
    check_plan(params, spec)
    changed = load_params("params.yaml", ["train.max_steps=7"])
    with pytest.raises(ValueError, match="stale against params.yaml: run the plan stage"):
        check_plan(changed, spec)
