"""Stages `train@<task>-<method>-<seed>` and `train_sclora@<task>-<variant>-<beta>-<seed>`: one run each.

Initialise (sclora.method.inits.apply_method from what the method's row `reads`: a capture, the solved
subspaces or the task's batches), fine-tune (sclora.runs.train, logging the loss into the run's MLflow
child run), export as the row's `export` says (a plain LoRA on the ORIGINAL base, the full model,
or OSF's own adapter), and evaluate that export with forgetting against the base model. A post-hoc
method (lora_intruder) applies its step to the trained adapter at each value of its knob, exports
and evaluates each; the knob's default is the run's export and metrics, every value a point of
run.json's `curve`. Output:
artifacts/runs/<run>/{model, export, eval/{metrics.json, samples.jsonl}, loss_history.json, run.json},
renamed into place when complete. Checkpoints live in artifacts/checkpoints/<run> (not a
DVC output, so DVC does not delete them): a killed run resumes from the last one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from sclora.evaluate.scorer import SuiteScorer, score_to
from sclora.method.export import export_lora, save_initial_adapter
from sclora.method.inits import post_hoc_step
from sclora.method.table import BY_NAME, has_adapter
from sclora.ops import tracking
from sclora.ops.config import Params, eval_settings
from sclora.ops.lineage import locked_stages, stage_hashes
from sclora.runs.inputs import post_hoc_arguments
from sclora.runs.loss_logging import MlflowLossCallback
from sclora.runs.models import load_model, load_tokenizer, load_with_adapter, lora_config
from sclora.runs.resume import claim
from sclora.runs.run import fine_tune, prepare, training_records
from sclora.runs.train import LOSS_HISTORY, MODEL
from tasks.artifacts import (
    BASE_METRICS,
    CHECKPOINTS,
    FINGERPRINTS,
    RUN_FILE,
    RunSpec,
    check_plan,
    load_base,
    parse_run,
    prepared_path,
    read_json,
    run_settings,
    staged_dir,
    stored_inputs,
    task_records,
    write_json,
)  # fmt: skip

INITIAL_ADAPTER = "initial_adapter"


def run(params: Params, item: str) -> dict:
    spec = parse_run(params, item)
    check_plan(params, spec)
    parent = tracking.pipeline_parent(params)  # an unreachable tracking store fails here, before anything is written
    settings = run_settings(params, spec)
    model_params = params.model
    tokenizer = load_tokenizer(model_params.path, trust_remote_code=model_params.trust_remote_code)
    source = params.data.finetune[spec.task]
    records = task_records(source)
    fingerprints = read_json(FINGERPRINTS, "prepared data fingerprints")

    work = CHECKPOINTS / spec.name
    request = {
        "run": spec.name, "settings": settings.model_dump(), "adapter": params.adapter.model_dump(),
        "model": model_params.model_dump(), "data": fingerprints.get(source),
    }  # fmt: skip
    adapter = params.adapter
    inputs = stored_inputs(params, spec.task)
    # A bad rank or bad targets fail here, before anything is written: the work folder is claimed after the init.
    model = prepare(
        lambda: load_base(params), spec.method, seed=spec.seed, beta=spec.beta, inputs=inputs,
        lora=lora_config(adapter.rank, adapter.alpha, adapter.dropout, adapter.target_modules),
    )  # fmt: skip
    claim(work, request)  # checkpoints of another request cannot be resumed
    preserved = [r for name in params.data.preserve for r in task_records(name)]
    records = training_records(spec.method, records, preserved, seed=spec.seed)  # a mixing row's share of D-
    row = BY_NAME[spec.method]
    if row.residual:  # what exports the trained adapter as a plain LoRA on the original base
        save_initial_adapter(model, work / INITIAL_ADAPTER)

    upstream = _locked_stages(spec)
    logged = {"method": spec.method, "beta": spec.beta, "seed": spec.seed, "train": settings.model_dump()}
    if has_adapter(spec.method):
        logged["adapter"] = params.adapter.model_dump()
    scorer = SuiteScorer(tokenizer, eval_settings(params))
    with tracking.child_run(
        spec.task, spec.method, spec.beta, spec.seed,
        parent_run_id=parent, uri=params.tracking.uri, params=logged,
        tags=stage_hashes("dvc.lock", upstream) if upstream else None,
        datasets=_datasets(params, spec, fingerprints),
    ) as child:  # fmt: skip
        result = fine_tune(model, tokenizer, records, work, settings, callbacks=[MlflowLossCallback()])
        trained = result.trained
        with staged_dir(spec.dir) as staging:
            export = staging / "export"
            shutil.move(str(trained.model_dir), staging / MODEL)
            shutil.copy(work / LOSS_HISTORY, staging / LOSS_HISTORY)
            curve = []
            if row.kind == "post_hoc":
                curve, metrics = _post_hoc_points(params, spec, model, inputs, scorer, staging)
            elif row.export == "full_model":
                # The trained model is the export (DVC's content-addressed cache stores the files once).
                shutil.copytree(staging / MODEL, export)
            else:
                export_lora(model, export, work / INITIAL_ADAPTER if row.residual else None)
            del model
            if row.kind != "post_hoc":
                metrics = score_to(scorer, _exported_model(params, spec, export), staging / "eval", BASE_METRICS)
            tracking.log_metrics({k: v for k, v in metrics.items() if k not in ("tasks", "forgetting_ratio")})
            tracking.log_files([staging / "eval" / "samples.jsonl"], artifact_path="eval")
            final_loss = trained.loss_history[-1]["loss"] if trained.loss_history else None
            summary = {
                "run": spec.name, "task": spec.task, "method": spec.method, "beta": spec.beta, "seed": spec.seed,
                "lr": settings.lr, "global_step": trained.global_step, "resumed_from": trained.resumed_from,
                "final_loss": final_loss, "trainable_parameters": result.trainable, "export": row.export,
                "mlflow_run_id": child.info.run_id,
            }  # fmt: skip
            if curve:
                summary.update(knob=row.knob, knob_default=row.knob_default, curve=curve)
            write_json(staging / RUN_FILE, summary)
    shutil.rmtree(work)
    return summary


def _post_hoc_points(params: Params, spec: RunSpec, model, inputs, scorer, staging: Path) -> tuple[list, dict]:
    """A post-hoc row's step at each knob value, exported and scored: (the curve, the default value's metrics). The
    default's export and eval are the run's own (`staging`/export, `staging`/eval)."""
    row, curve, metrics = BY_NAME[spec.method], [], {}
    for value in row.knob_values:
        point = staging / f"{row.knob}-{value:g}"
        step = post_hoc_step(model, spec.method, value, **post_hoc_arguments(spec.method, inputs))
        export_lora(model, point / "export", adapter=step)
        point_metrics = score_to(scorer, _exported_model(params, spec, point / "export"), point / "eval", BASE_METRICS)
        curve.append({row.knob: value, **{k: v for k, v in point_metrics.items() if k != "tasks"}})
        if value == row.knob_default:
            shutil.move(str(point / "export"), staging / "export")
            shutil.move(str(point / "eval"), staging / "eval")
            metrics = point_metrics
        shutil.rmtree(point)
    return curve, metrics


def _exported_model(params: Params, spec: RunSpec, export: Path) -> torch.nn.Module:
    """What gets registered, loaded as a user would: the full model, or the plain LoRA on the original base."""
    model = params.model
    if BY_NAME[spec.method].export == "full_model":
        return load_model(export, dtype=model.dtype, trust_remote_code=model.trust_remote_code)
    return load_with_adapter(model.path, export, dtype=model.dtype, trust_remote_code=model.trust_remote_code)


def _datasets(params: Params, spec: RunSpec, fingerprints: dict[str, str]) -> list[tracking.RunDataset]:
    """The prepared files the run read (D+), was kept from forgetting (D-) and was evaluated on, with their
    fingerprints cut to the 16 characters the `data.<name>` tags have always carried."""
    data = params.data
    roles = {data.finetune[spec.task]: "training"}
    roles.update({name: "preserve" for name in data.preserve if name not in roles})
    roles.update({name: "evaluation" for name in data.eval.values() if name not in roles})
    return [tracking.RunDataset(name, fingerprints[name][:16], prepared_path(name), role)
            for name, role in roles.items() if name in fingerprints]  # fmt: skip


def _locked_stages(spec: RunSpec) -> list[str]:
    """Upstream stages already in dvc.lock (none when the stage runs outside `dvc repro`)."""
    lock = Path("dvc.lock")
    if not lock.is_file():
        return []
    locked = locked_stages(lock)
    wanted = ["testbed@testbed", "align@real", "prepare", "capture", "evaluate_base"]  # the base model's source first
    if BY_NAME[spec.method].reads == "subspaces":
        wanted.append(f"solve@{spec.beta}")
    return [stage for stage in wanted if stage in locked]
