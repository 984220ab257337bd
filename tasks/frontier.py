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
finished (rate, seed) run is appended to artifacts/checkpoints/frontier-<item>/points.jsonl first, so a killed
item resumes at the next run instead of starting over.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time

import torch

from sclora.evaluate.suite import evaluate, testbed_data_files
from sclora.evaluate.task_loss import task_nll
from sclora.method.gather import capture
from sclora.method.inits import apply_method
from sclora.method.subspace import sclora_subspaces
from sclora.method.table import BY_NAME
from sclora.ops.config import Params, parse_config
from sclora.runs.curves import StepEvaluation, checkpoint_steps
from sclora.runs.data import chat_batches, read_records
from sclora.runs.models import load_model, load_tokenizer, lora_config
from sclora.runs.train import train
from sclora.testbed.world import dataset_file
from tasks.artifacts import CHECKPOINTS, frontier_build_dir, frontier_points_path, write_json
from tasks.capture import SHUFFLE_SEED
from tasks.evaluate_base import eval_settings
from tasks.train import collated_batches
from tasks.tune import validation_settings

# The suite's metrics a point keeps (the per-category breakdowns stay out).
SCORED = ("utility", "knowledge", "knowledge_logprob", "attack_success_rate", "refusal_rate", "collapse_rate",
          "refusal_margin", "benign_helpfulness", "benign_refusal_rate")  # fmt: skip


def run(params: Params, item: str) -> dict:
    build, config = parse_item(params, item)
    method, beta = parse_config(config)
    frontier = params.frontier
    root = frontier_build_dir(build)
    if not (root / "base").is_dir():
        raise FileNotFoundError(f"{root}: build {build} not found; run the frontier_build stage")
    data = root / "data"
    tokenizer = load_tokenizer(root / "base")
    source = params.data.finetune[frontier.task]
    records = read_records(dataset_file(data, source))
    held_out = eval_settings(params)
    files = testbed_data_files(data)
    held_out = held_out.model_copy(update={"data_files": {task: files[task] for task in held_out.data_files}})
    validation = validation_settings(params)
    val_file = dataset_file(data, params.data.validation)
    validation = validation.model_copy(update={"data_files": dict.fromkeys(validation.data_files, str(val_file))})
    nll_sets = {
        "validation": read_records(val_file),
        "eval": read_records(dataset_file(data, params.data.eval["task"])),
    }
    max_length = params.train.max_length

    def score(model: torch.nn.Module) -> dict:
        metrics, _ = evaluate(model, tokenizer, held_out)
        validated, _ = evaluate(model, tokenizer, validation)
        point = {name: metrics[name] for name in SCORED if name in metrics}
        point["validation_utility"] = validated["utility"]
        for split, split_records in nll_sets.items():
            point[f"task_nll_{split}"] = task_nll(model, tokenizer, split_records, max_length=max_length)
        return point

    base = score(load_model(root / "base"))
    inputs = method_inputs(params, method, beta, root, tokenizer, records)
    adapter = params.adapter
    lora = lora_config(adapter.rank, adapter.alpha, adapter.dropout, adapter.target_modules)
    steps = checkpoint_steps(params.train.max_steps, frontier.checkpoints)
    work = CHECKPOINTS / f"frontier-{item}"
    done = _finished(work / "points.jsonl", params, config)
    for lr in frontier.lrs:
        for seed in frontier.seeds:
            if (lr, seed) in done:
                continue
            started = time.monotonic()
            settings = params.train.settings_for(method, seed).model_copy(update={"lr": lr, "save_steps": 10**9})
            torch.manual_seed(seed)  # LoRA's random A, random_subspace's basis
            model = apply_method(load_model(root / "base"), lora, method, seed=seed, **inputs).train()
            scorer = StepEvaluation(steps, lambda model, step: score(model))
            train(model, tokenizer, records, work / "run", settings, callbacks=[scorer])
            shutil.rmtree(work / "run")
            points = [{"lr": lr, "seed": seed, "max_steps": params.train.max_steps, **p} for p in scorer.points]
            with (work / "points.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"config": config, "request": _request(params), "points": points}) + "\n")
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


def method_inputs(params: Params, method: str, beta: float | None, root, tokenizer, records: list[dict]) -> dict:
    """What the method's init reads (sclora.method.table' `reads`), computed from the build's own base model and data:
    the captured statistics of D+ (the task) and D- (the preserved sets), SC-LoRA's subspaces, or task batches."""
    reads = BY_NAME[method].reads
    if reads is None:
        return {}
    if reads == "task_batches":
        return {"task_batches": collated_batches(tokenizer, records, params)}
    model = load_model(root / "base")
    knobs = params.capture

    def stats(rows: list[dict], count: int):
        rows = list(rows)
        random.Random(SHUFFLE_SEED).shuffle(rows)  # one fixed sample, as the capture stage takes
        batches = chat_batches(tokenizer, rows[:count], knobs.batch_size, params.train.max_length)
        return capture(model, batches, params.adapter.target_modules, covariance=knobs.covariance, progress=False)

    preserved = [r for name in params.data.preserve for r in read_records(dataset_file(root / "data", name))]
    if reads == "neg_covariance":
        return {"neg": stats(preserved, knobs.samples_neg)}
    pos = stats(records, knobs.samples_pos)
    if reads == "pos_covariance":
        return {"pos": pos}
    adapter = params.adapter
    config = lora_config(adapter.rank, adapter.alpha, adapter.dropout, adapter.target_modules)
    neg = stats(preserved, knobs.samples_neg)
    subspaces = sclora_subspaces(model, config, pos, neg, beta, rank=adapter.rank, normalize=params.solve.normalize)
    return {"subspaces": subspaces}


def _request(params: Params) -> dict:
    """What a finished run's points depend on besides its rate and seed: a resumed item must match it."""
    return {
        "train": params.train.model_dump(mode="json"), "adapter": params.adapter.model_dump(mode="json"),
        "eval": params.eval.model_dump(mode="json"), "checkpoints": params.frontier.checkpoints,
        "task": params.frontier.task, "capture": params.capture.model_dump(mode="json"),
        "solve": params.solve.normalize,
    }  # fmt: skip


def _finished(path, params: Params, config: str) -> dict:
    """(lr, seed) -> points of the runs a killed item finished with the same request; others are dropped."""
    done: dict = {}
    if not path.is_file():
        return done
    request = _request(params)
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # the line a kill cut short
            continue
        if entry["config"] == config and entry["request"] == request and entry["points"]:
            first = entry["points"][0]
            done[first["lr"], first["seed"]] = entry["points"]
    return done
