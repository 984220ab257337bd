"""Stages `tune@<method>` and `tune_sclora@<variant>-<beta>`: a method's learning rate, chosen on the validation split.

Trains the method once per rate of `tune.factors` x its `train.learning_rates` rate (one seed, on
`tune.task`), then scores each trained model twice:
- on `data.validation` with the suite's utility tasks: the rate with the best validation utility is
  chosen (ties go to the smaller rate). Nothing else enters the choice, so every eval set stays held out;
- on the eval sets, as every run is: these points are each method's learning-rate curve (utility
  against preservation), reported beside the choice and never used for it.
Output: artifacts/tune/<method>.json (SC-LoRA: <variant>-<beta>.json), read by the plan stage when
`train.lr_source` is artifacts/tune. The tuning runs are not registered and not in the comparison: their seed,
`tune.seed`, is none of the compared seeds (validated in sclora.ops.config).
"""

from __future__ import annotations

import shutil

from sclora.evaluate.metrics import shown_in
from sclora.evaluate.scorer import SuiteScorer
from sclora.ops.config import Params, eval_settings, validation_settings
from sclora.runs.models import load_tokenizer, lora_config
from sclora.runs.run import run as run_one
from tasks.artifacts import (
    CHECKPOINTS,
    RunSpec,
    load_base,
    stored_inputs,
    task_records,
    tune_item,
    tune_path,
    write_json,
)

CURVE = shown_in("curve")


def run(params: Params, item: str) -> dict:
    spec = tuned_spec(params, item)
    tune, model_params, adapter = params.tune, params.model, params.adapter
    base = params.train.settings_for(spec.method, spec.seed)
    tokenizer = load_tokenizer(model_params.path, trust_remote_code=model_params.trust_remote_code)
    records = task_records(params.data.finetune[spec.task])
    validation = SuiteScorer(tokenizer, validation_settings(params))
    held_out = SuiteScorer(tokenizer, eval_settings(params))
    inputs = stored_inputs(params, spec.task)
    lora = lora_config(adapter.rank, adapter.alpha, adapter.dropout, adapter.target_modules)
    points = []
    for factor in tune.factors:
        settings = base.model_copy(update={"lr": base.lr * factor})
        work = CHECKPOINTS / f"tune-{item}-{factor:g}"
        shutil.rmtree(work, ignore_errors=True)  # a tuning run is short: a killed one starts over
        model = run_one(
            lambda: load_base(params), tokenizer, records, spec.method, settings, work,
            lora=lora, beta=spec.beta, inputs=inputs,
        ).model.eval()  # fmt: skip
        scored, curve = validation(model).metrics, held_out(model).metrics
        shutil.rmtree(work)
        points.append(
            {
                "factor": factor,
                "lr": settings.lr,
                "validation_utility": scored["utility"],
                "eval": {metric: curve[metric] for metric in CURVE if metric in curve},
            }
        )
    chosen = choose(points)
    result = {
        "item": item,
        "method": spec.method,
        "beta": spec.beta,
        "task": spec.task,
        "seed": spec.seed,
        "params_lr": base.lr,
        "chosen_lr": chosen["lr"],
        "points": points,
    }
    write_json(tune_path(item), result)
    return {"item": item, "chosen_lr": chosen["lr"], "validation_utility": chosen["validation_utility"]}


def choose(points: list[dict]) -> dict:
    """The point with the best validation utility; of equals, the smaller rate."""
    return max(points, key=lambda point: (point["validation_utility"], -point["lr"]))


def tuned_spec(params: Params, item: str) -> RunSpec:
    """The tuning run an item names: a baseline of `tune.methods`, or `<variant>-<beta>` of `tune.sclora_variants`
    and `tune.betas`."""
    tune = params.tune
    for method in tune.methods:
        if item == method:
            return RunSpec(tune.task, method, tune.seed)
    for variant in tune.sclora_variants:
        for beta in tune.betas:
            if item == tune_item(variant, beta):
                return RunSpec(tune.task, variant, tune.seed, beta)
    known = [*tune.methods, *(tune_item(v, b) for v in tune.sclora_variants for b in tune.betas)]
    raise ValueError(f"unknown tune item '{item}': params tune {', '.join(known) or 'nothing (tune.methods: [])'}")
