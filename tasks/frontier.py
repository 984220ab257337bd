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
from sclora.method.table import BY_NAME
from sclora.ops.config import Params, eval_settings, parse_config, validation_settings
from sclora.runs.curves import checkpoint_steps
from sclora.runs.data import read_records
from sclora.runs.inputs import CaptureKnobs, Computed
from sclora.runs.models import load_model, load_tokenizer, lora_config
from sclora.runs.resume import FinishedRuns, claim
from sclora.runs.run import run as run_one
from sclora.testbed.world import dataset_file
from tasks.artifacts import CHECKPOINTS, frontier_build_dir, frontier_points_path, write_json

# The suite's metrics a point keeps (the per-category breakdowns stay out).
SCORED = shown_in("front")
SHOWN = ("utility", "knowledge", "attack_success_rate", "refusal_rate")  # a finished run's line
REAL, REAL_BUILD = "real", 0  # the real source's one build (sources.real), numbered 0 in the points


def run(params: Params, item: str) -> dict:
    build, config = parse_item(params, item)
    method, value = parse_config(config)
    knob = BY_NAME[method].knob  # the configuration's value is its beta (SC-LoRA) or its mixing share (mix)
    beta, share = (value if knob == "beta" else None), (value if knob == "share" else None)
    params = build_params(params, build)  # the build's model and data in place of the params' own
    if params.frontier.max_steps is not None:  # the protocol's own budget
        params = params.model_copy(
            update={"train": params.train.model_copy(update={"max_steps": params.frontier.max_steps})}
        )
    frontier, model_path = params.frontier, params.model.path
    sources = params.data.sources
    tokenizer = load_tokenizer(model_path)
    records = read_records(sources[params.data.finetune[frontier.task]].path)
    score = _scorer(params, tokenizer)
    base = score(load_model(model_path)).metrics
    adapter = params.adapter
    lora = lora_config(adapter.rank, adapter.alpha, adapter.dropout, adapter.target_modules)
    knobs = params.capture
    preserved = [r for name in params.data.preserve for r in read_records(sources[name].path)]
    unaligned = params.model.unaligned
    inputs = Computed(
        model=lambda: load_model(model_path), tokenizer=tokenizer, task=records, preserved=preserved,
        knobs=CaptureKnobs(knobs.samples_pos, knobs.samples_neg, knobs.batch_size, knobs.covariance,
                           params.train.max_length),
        lora=lora, normalize=params.solve.normalize,
        unaligned=None if unaligned is None else (lambda: load_model(unaligned)),
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
                lambda: load_model(model_path), tokenizer, records, method, settings, work / "run",
                lora=lora, beta=beta, inputs=inputs, score=score, steps=steps, preserved=preserved, share=share,
            )  # fmt: skip
            shutil.rmtree(work / "run")
            points = [{"lr": lr, "seed": seed, "max_steps": params.train.max_steps, **p} for p in result.points]
            finished.add((lr, seed), points)
            done[lr, seed] = points
            last = points[-1]
            print(f"frontier: build {build} {config} lr {lr:g} seed {seed} ({time.monotonic() - started:.0f} s): "
                  + " ".join(f"{k} {last[k]:.2f}" for k in SHOWN if k in last),
                  file=sys.stderr, flush=True)  # fmt: skip
    number = REAL_BUILD if build == REAL else build  # the real source's one build, numbered as a build is
    result = {
        "build": number, "config": config, "method": method, "beta": value, "task": frontier.task,
        "lrs": list(frontier.lrs), "seeds": list(frontier.seeds), "steps": steps, "base": base,
        # A point's `beta` is its configuration's knob value: SC-LoRA's beta, or mix's share.
        "points": [{"build": number, "task": frontier.task, "method": method, "beta": value, **p}
                   for lr in frontier.lrs for seed in frontier.seeds for p in done[lr, seed]],
    }  # fmt: skip
    write_json(frontier_points_path(build, config), result)
    shutil.rmtree(work, ignore_errors=True)
    return {"item": item, "points": len(result["points"])}


def _scorer(params: Params, tokenizer):
    """What a frontier point holds, as a scorer: the suite's front metrics on the eval sets; the suite's utility on
    the validation split (`validation_utility`: what a tuner would read); the task's loss on the validation and eval
    splits (`task_nll_validation`, `task_nll_eval`: learning, beside exact match, which moves in steps and pins at 0
    and 1)."""
    held_out, validation = (
        SuiteScorer(tokenizer, eval_settings(params)),
        SuiteScorer(tokenizer, validation_settings(params)),
    )
    sources = params.data.sources
    nll_sets = {"validation": read_records(sources[params.data.validation].path),
                "eval": read_records(sources[params.data.eval["task"]].path)}  # fmt: skip

    def score(model) -> Scored:
        scored = held_out(model)
        metrics = scored.metrics
        point = {name: metrics[name] for name in SCORED if name in metrics}
        point.update(knowledge_halves(scored.samples))
        point["validation_utility"] = validation(model).metrics["utility"]
        for split, records in nll_sets.items():
            point[f"task_nll_{split}"] = task_nll(model, tokenizer, records, max_length=params.train.max_length)
        return Scored(point, [])

    return score


def knowledge_halves(samples: list[dict]) -> dict[str, float]:
    """Knowledge on two fixed halves of the knowledge eval set, by item (each task's even and odd documents):
    `knowledge_select`, on which the report chooses front points, and `knowledge_report`, which it reports there
    (sclora.analysis.matched): a point chosen for its knowledge is never measured on the facts that chose it. Each
    half is the mean of its tasks' means, as the role's score is; {} when the suite asked no knowledge."""
    by_task: dict[str, list[tuple[int, float]]] = {}
    for row in samples:
        if row["role"] == "knowledge":
            by_task.setdefault(row["task"], []).append((int(row["doc_id"]), float(next(iter(row["scores"].values())))))
    halves = {}
    for name, parity in (("knowledge_select", 0), ("knowledge_report", 1)):
        means = [sum(half) / len(half) for scores in by_task.values()
                 if (half := [score for doc, score in scores if doc % 2 == parity])]  # fmt: skip
        if means:
            halves[name] = sum(means) / len(means)
    return halves


def parse_item(params: Params, item: str) -> tuple[int | str, str]:
    """(build, config) of an item `<build>-<config>`: a testbed build of frontier.builds, or `real` (the real source's
    one model, when frontier.real names it), and a config of frontier.configs."""
    head, _, config = item.partition("-")
    frontier = params.frontier
    builds = [str(b) for b in frontier.builds] + frontier.real
    if head not in builds or config not in frontier.configs:
        raise ValueError(
            f"frontier item '{item}': expected <build>-<config> with a build of frontier.builds {frontier.builds} "
            f"(or 'real' when frontier.real names it) and a config of frontier.configs {frontier.configs}"
        )
    return (REAL if head == REAL else int(head)), config


def build_params(params: Params, build: int | str) -> Params:
    """`params` with a testbed build's model and data (its datasets under the build's folder, as the testbed stage
    writes them under data.dir); the real source's build is the params' own model and data."""
    if build == REAL:
        return params
    root = frontier_build_dir(build)
    if not (root / "base").is_dir():
        raise FileNotFoundError(f"{root}: build {build} not found; run the frontier_build stage")
    data = params.data
    sources = {name: source.model_copy(update={"path": str(dataset_file(root / "data", name))})
               for name, source in data.sources.items()}  # fmt: skip
    return params.model_copy(update={
        "model": params.model.model_copy(update={"path": str(root / "base")}),
        "data": data.model_copy(update={"dir": str(root / "data"), "sources": sources}),
    })  # fmt: skip


def _request(params: Params) -> dict:
    """What a finished run's points depend on besides its rate and seed: a resumed item must match it."""
    return {
        "train": params.train.model_dump(mode="json"), "adapter": params.adapter.model_dump(mode="json"),
        "eval": params.eval.model_dump(mode="json"), "checkpoints": params.frontier.checkpoints,
        "task": params.frontier.task, "capture": params.capture.model_dump(mode="json"),
        "solve": params.solve.normalize,
    }  # fmt: skip
