"""Stage `frontier@<build>-<config>`: one configuration's learning-forgetting points on one testbed build.

For the build made by `frontier_build@<build>` and a configuration of `frontier.configs` (`lora`, `sclora-0.9`),
trains the configuration at every rate of `frontier.lrs` (one absolute grid, the same for every configuration)
on `frontier.task`, for every seed of `frontier.seeds`, all in this one process (a model load and an lm-eval
start per point would cost more than the training). Each run is scored at the `frontier.checkpoints` shares of
`train.max_steps`, in process (sclora.runs.curves), by:
- the evaluation suite on the build's eval sets (utility, knowledge, harmful compliance, refusal, collapse,
  benign helpfulness, knowledge_logprob, refusal_margin), as every run of the pipeline is;
- the suite's utility on the validation split (`validation_utility`: what a tuner would read);
- the task's loss on the validation and eval splits (`task_nll_validation`, `task_nll_eval`: learning, beside
  exact match, which moves in steps and pins at 0 and 1).
The base model is scored the same way (`base`). Output: artifacts/frontier/points/build-<b>-<config>.json. Every
finished (rate, seed) run is appended to artifacts/checkpoints/frontier-<item>/points.jsonl first (sclora.runs.resume),
so a killed item resumes at the next run instead of starting over.
"""

from __future__ import annotations

import shutil
import sys
import time

from sclora.evaluate.metrics import shown_in
from sclora.evaluate.scorer import Scored, SuiteScorer
from sclora.evaluate.task_loss import task_nll
from sclora.ops.config import Params, eval_settings, parse_config, validation_settings
from sclora.runs.curves import checkpoint_steps
from sclora.runs.data import read_records
from sclora.runs.inputs import CaptureKnobs, Computed
from sclora.runs.models import load_model, load_tokenizer, lora_config
from sclora.runs.resume import FinishedRuns, claim
from sclora.runs.run import run as run_one
from sclora.testbed.world import dataset_file, eval_data_files
from tasks.artifacts import CHECKPOINTS, frontier_build_dir, frontier_points_path, write_json

# The suite's metrics a point keeps (the per-category breakdowns stay out).
SCORED = shown_in("front")


def run(params: Params, item: str) -> dict:
    build, config = parse_item(params, item)
    method, beta = parse_config(config)
    frontier = params.frontier
    root = frontier_build_dir(build)
    if not (root / "base").is_dir():
        raise FileNotFoundError(f"{root}: build {build} not found; run the frontier_build stage")
    data = root / "data"
    tokenizer = load_tokenizer(root / "base")
    records = read_records(dataset_file(data, params.data.finetune[frontier.task]))
    score = _scorer(params, tokenizer, data)
    base = score(load_model(root / "base")).metrics
    adapter = params.adapter
    lora = lora_config(adapter.rank, adapter.alpha, adapter.dropout, adapter.target_modules)
    knobs = params.capture
    inputs = Computed(
        model=lambda: load_model(root / "base"), tokenizer=tokenizer, task=records,
        preserved=[r for name in params.data.preserve for r in read_records(dataset_file(data, name))],
        knobs=CaptureKnobs(knobs.samples_pos, knobs.samples_neg, knobs.batch_size, knobs.covariance,
                           params.train.max_length),
        lora=lora, normalize=params.solve.normalize,
    )  # fmt: skip
    steps = checkpoint_steps(params.train.max_steps, frontier.checkpoints)
    work = CHECKPOINTS / f"frontier-{item}"
    claim(work, {"config": config, **_request(params)})
    finished = FinishedRuns(work / "points.jsonl")
    done = finished.done()
    for lr in frontier.lrs:
        for seed in frontier.seeds:
            if (lr, seed) in done:
                continue
            started = time.monotonic()
            settings = params.train.settings_for(method, seed).model_copy(update={"lr": lr, "save_steps": 10**9})
            result = run_one(
                lambda: load_model(root / "base"), tokenizer, records, method, settings, work / "run",
                lora=lora, beta=beta, inputs=inputs, score=score, steps=steps,
            )  # fmt: skip
            shutil.rmtree(work / "run")
            points = [{"lr": lr, "seed": seed, "max_steps": params.train.max_steps, **p} for p in result.points]
            finished.add((lr, seed), points)
            done[lr, seed] = points
            last = points[-1]
            print(f"frontier: build {build} {config} lr {lr:g} seed {seed} ({time.monotonic() - started:.0f} s): "
                  + " ".join(f"{k} {last[k]:.2f}" for k in ("utility", "knowledge", "attack_success_rate")),
                  file=sys.stderr, flush=True)  # fmt: skip
    result = {
        "build": build, "config": config, "method": method, "beta": beta, "task": frontier.task,
        "lrs": list(frontier.lrs), "seeds": list(frontier.seeds), "steps": steps, "base": base,
        "points": [{"build": build, "task": frontier.task, "method": method, "beta": beta, **p}
                   for lr in frontier.lrs for seed in frontier.seeds for p in done[lr, seed]],
    }  # fmt: skip
    write_json(frontier_points_path(build, config), result)
    shutil.rmtree(work, ignore_errors=True)
    return {"item": item, "points": len(result["points"])}


def _scorer(params: Params, tokenizer, data):
    """What a frontier point holds, as a scorer: the suite's front metrics on the build's eval sets; the suite's
    utility on the validation split (`validation_utility`: what a tuner would read); the task's loss on the
    validation and eval splits (`task_nll_validation`, `task_nll_eval`: learning, beside exact match, which moves
    in steps and pins at 0 and 1)."""
    held_out = eval_settings(params)
    files = eval_data_files(data)
    held_out = SuiteScorer(
        tokenizer, held_out.model_copy(update={"data_files": {t: files[t] for t in held_out.data_files}})
    )
    validation = validation_settings(params)
    val_file = dataset_file(data, params.data.validation)
    validation = SuiteScorer(
        tokenizer, validation.model_copy(update={"data_files": dict.fromkeys(validation.data_files, str(val_file))})
    )
    nll_sets = {
        "validation": read_records(val_file),
        "eval": read_records(dataset_file(data, params.data.eval["task"])),
    }

    def score(model) -> Scored:
        metrics = held_out(model).metrics
        point = {name: metrics[name] for name in SCORED if name in metrics}
        point["validation_utility"] = validation(model).metrics["utility"]
        for split, records in nll_sets.items():
            point[f"task_nll_{split}"] = task_nll(model, tokenizer, records, max_length=params.train.max_length)
        return Scored(point, [])

    return score


def parse_item(params: Params, item: str) -> tuple[int, str]:
    """(build, config) of an item `<build>-<config>`, both from params.frontier."""
    head, _, config = item.partition("-")
    frontier = params.frontier
    if not head.isdigit() or int(head) not in frontier.builds or config not in frontier.configs:
        raise ValueError(
            f"frontier item '{item}': expected <build>-<config> with a build of frontier.builds {frontier.builds} "
            f"and a config of frontier.configs {frontier.configs}"
        )
    return int(head), config


def _request(params: Params) -> dict:
    """What a finished run's points depend on besides its rate and seed: a resumed item must match it."""
    return {
        "train": params.train.model_dump(mode="json"), "adapter": params.adapter.model_dump(mode="json"),
        "eval": params.eval.model_dump(mode="json"), "checkpoints": params.frontier.checkpoints,
        "task": params.frontier.task, "capture": params.capture.model_dump(mode="json"),
        "solve": params.solve.normalize,
    }  # fmt: skip
