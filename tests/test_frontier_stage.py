"""The frontier's stages on the tiny testbed: a build, then a configuration at every rate, seed and checkpoint
(tasks/frontier_build.py, tasks/frontier.py); a killed item resumes at the next run; bad items fail clearly."""

import json

import pytest
from stage_project import project_params, stage, write_params

from tasks.artifacts import CHECKPOINTS, frontier_build_dir, frontier_points_path

SCORED = ("utility", "knowledge", "attack_success_rate", "knowledge_logprob", "refusal_margin", "benign_helpfulness",
          "validation_utility", "task_nll_validation", "task_nll_eval", "knowledge_select",
          "knowledge_report")  # fmt: skip
FRONTIER = {"builds": [0], "seeds": [0, 1], "configs": ["lora", "sclora-0.8"], "lrs": [1.0e-3, 4.0e-3],
            "checkpoints": [0.5, 1.0], "task": "benign", "levels": [0.5],
            "primary": {"config": "sclora-0.8", "versus": "lora", "level": 0.5}}  # fmt: skip


@pytest.fixture
def frontier_project(project):
    params = project_params(project)
    params["frontier"] = FRONTIER
    write_params(project, params)
    assert stage("frontier_build", "0") == 0
    return project


def read_points(config: str) -> dict:
    return json.loads(frontier_points_path(0, config).read_text())


@pytest.mark.slow
def test_a_configuration_is_scored_at_every_rate_seed_and_checkpoint(frontier_project):
    assert (frontier_build_dir(0) / "base").is_dir()
    for config in FRONTIER["configs"]:
        assert stage("frontier", f"0-{config}") == 0
        result = read_points(config)
        points = result["points"]
        # train.max_steps 3 at shares 0.5 and 1.0: steps 2 and 3, for 2 rates x 2 seeds
        assert result["steps"] == [2, 3]
        assert sorted((p["lr"], p["seed"], p["step"]) for p in points) == sorted(
            (lr, seed, step) for lr in FRONTIER["lrs"] for seed in FRONTIER["seeds"] for step in (2, 3)
        )
        for point in points:
            for key in SCORED:
                assert isinstance(point[key], float), key
            assert point["build"] == 0 and point["task"] == "benign"
        assert result["base"]["knowledge"] == pytest.approx(read_points("lora")["base"]["knowledge"])
    sclora = read_points("sclora-0.8")["points"]
    assert {(p["method"], p["beta"]) for p in sclora} == {("sclora", 0.8)}
    # Learning moves the task's held-out loss between checkpoints of one run
    first = {(p["lr"], p["seed"]): p for p in sclora if p["step"] == 2}
    assert any(p["task_nll_validation"] != first[p["lr"], p["seed"]]["task_nll_validation"]
               for p in sclora if p["step"] == 3)  # fmt: skip


@pytest.mark.slow
def test_a_killed_item_resumes_at_the_next_run(frontier_project, monkeypatch):
    assert stage("frontier", "0-lora") == 0
    complete = read_points("lora")["points"]
    # Plant what a kill after the first (rate, seed) run leaves: the claimed folder with that run finished.
    import sclora.runs.run as runs
    import tasks.frontier as frontier
    from sclora.ops.config import load_params
    from sclora.runs.resume import FinishedRuns, claim

    work = CHECKPOINTS / "frontier-0-lora"
    claim(work, {"config": "lora", **frontier._request(load_params("params.yaml"))})
    first = [p for p in complete if (p["lr"], p["seed"]) == (1.0e-3, 0)]
    FinishedRuns(work / "points.jsonl").add(
        (1.0e-3, 0), [{k: p[k] for k in p if k not in ("build", "task", "method", "beta")} for p in first]
    )
    with (work / "points.jsonl").open("a") as handle:
        handle.write('{"cut sh')  # the line a kill cut short
    frontier_points_path(0, "lora").unlink()
    trained = []
    real_train = runs.train
    monkeypatch.setattr(runs, "train", lambda *a, **k: trained.append(a[4].lr) or real_train(*a, **k))
    assert stage("frontier", "0-lora") == 0
    assert len(trained) == 3  # 4 runs, the planted one not trained again
    resumed = read_points("lora")["points"]
    key = lambda p: (p["lr"], p["seed"], p["step"])  # noqa: E731
    for a, b in zip(sorted(resumed, key=key), sorted(complete, key=key), strict=True):
        assert key(a) == key(b)
        assert a["utility"] == pytest.approx(b["utility"]) and a["task_nll_eval"] == pytest.approx(b["task_nll_eval"])
    assert not work.exists()  # done: the partial file is gone


def test_bad_items_fail_with_one_line_and_write_nothing(frontier_project, capsys):
    for item, message in (("1-lora", "frontier.builds"), ("0-pissa", "frontier.configs"), ("lora", "<build>-")):
        assert stage("frontier", item) == 1
        assert message in capsys.readouterr().err
    assert not (frontier_points_path(0, "lora").parent).exists()
    assert stage("frontier_build", "3") == 1
    assert "not in frontier.builds" in capsys.readouterr().err
