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

import pyarrow.parquet as pq
import torch

from sclora.method.export import export_lora, save_initial_adapter
from sclora.method.gather import CaptureStats
from sclora.method.inits import CAPTURE_ARGUMENT, apply_method, post_hoc_step
from sclora.method.subspace import load_subspaces
from sclora.method.table import BY_NAME, has_adapter
from sclora.ops import tracking
from sclora.ops.config import Params
from sclora.runs.data import ChatDataset, chat_collator
from sclora.runs.loss_logging import MlflowLossCallback
from sclora.runs.models import load_model, load_tokenizer, load_with_adapter, lora_config
from sclora.runs.train import LOSS_HISTORY, MODEL, train
from tasks.artifacts import (
    CHECKPOINTS,
    FINGERPRINTS,
    RUN_FILE,
    RunSpec,
    capture_dir,
    parse_run,
    prepared_path,
    read_json,
    run_settings,
    solve_dir,
    staged_dir,
    write_json,
)  # fmt: skip
from tasks.dvc_lock import locked_stages, stage_hashes
from tasks.evaluate_base import base_metrics_path, evaluate_run
from tasks.plan import check_plan

REQUEST = "request.json"  # what the checkpoints were made from; a different request starts over
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
    if (work / REQUEST).is_file() and read_json(work / REQUEST, "run request") != request:
        shutil.rmtree(work)  # checkpoints of other settings or data cannot be resumed

    torch.manual_seed(spec.seed)  # the LoRA init of A is random; resume then restores the trained weights anyway
    model = load_model(model_params.path, dtype=model_params.dtype, trust_remote_code=model_params.trust_remote_code)
    # A bad rank or bad targets fail here, before anything is written.
    model = initialised_model(model, params, spec, work / INITIAL_ADAPTER)
    write_json(work / REQUEST, request)

    upstream = _locked_stages(spec)
    row = BY_NAME[spec.method]
    logged = {"method": spec.method, "beta": spec.beta, "seed": spec.seed, "train": settings.model_dump()}
    if has_adapter(spec.method):
        logged["adapter"] = params.adapter.model_dump()
    with tracking.child_run(
        spec.task, spec.method, spec.beta, spec.seed,
        parent_run_id=parent, uri=params.tracking.uri, params=logged,
        tags=stage_hashes("dvc.lock", upstream) if upstream else None,
        datasets=_datasets(params, spec, fingerprints),
    ) as child:  # fmt: skip
        # What the method trains, stated beside every other's (OSF: LoRA's count plus r a layer).
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        result = train(model, tokenizer, records, work, settings, callbacks=[MlflowLossCallback()])
        with staged_dir(spec.dir) as staging:
            export = staging / "export"
            shutil.move(str(result.model_dir), staging / MODEL)
            shutil.copy(work / LOSS_HISTORY, staging / LOSS_HISTORY)
            curve = []
            if row.kind == "post_hoc":  # one point per knob value; the default's is the run's export and eval
                for value in row.knob_values:
                    point = staging / f"{row.knob}-{value:g}"
                    export_lora(model, point / "export", adapter=post_hoc_step(model, spec.method, value))
                    evaluated = _exported_model(params, spec, point / "export")
                    point_metrics = evaluate_run(
                        params, evaluated, tokenizer, point / "eval", base_metrics=base_metrics_path()
                    )
                    curve.append({row.knob: value, **{k: v for k, v in point_metrics.items() if k != "tasks"}})
                    if value == row.knob_default:
                        shutil.move(str(point / "export"), export)
                        shutil.move(str(point / "eval"), staging / "eval")
                        metrics = point_metrics
                    shutil.rmtree(point)
            elif row.export == "full_model":
                # The trained model is the export (DVC's content-addressed cache stores the files once).
                shutil.copytree(staging / MODEL, export)
            else:
                export_lora(model, export, work / INITIAL_ADAPTER if row.residual else None)
            del model
            if row.kind != "post_hoc":
                evaluated = _exported_model(params, spec, export)
                metrics = evaluate_run(params, evaluated, tokenizer, staging / "eval", base_metrics=base_metrics_path())
            tracking.log_metrics({k: v for k, v in metrics.items() if k not in ("tasks", "forgetting_ratio")})
            tracking.log_files([staging / "eval" / "samples.jsonl"], artifact_path="eval")
            final_loss = result.loss_history[-1]["loss"] if result.loss_history else None
            summary = {
                "run": spec.name, "task": spec.task, "method": spec.method, "beta": spec.beta, "seed": spec.seed,
                "lr": settings.lr, "global_step": result.global_step, "resumed_from": result.resumed_from,
                "final_loss": final_loss, "trainable_parameters": trainable, "export": row.export,
                "mlflow_run_id": child.info.run_id,
            }  # fmt: skip
            if curve:
                summary.update(knob=row.knob, knob_default=row.knob_default, curve=curve)
            write_json(staging / RUN_FILE, summary)
    shutil.rmtree(work)
    return summary


def task_records(source: str) -> list[dict]:
    path = prepared_path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prepared source '{source}' not found; run the prepare stage")
    return pq.read_table(path, columns=["id", "prompt", "response"]).to_pylist()


def initialised_model(model: torch.nn.Module, params: Params, spec: RunSpec, initial_dir: Path) -> torch.nn.Module:
    """The model ready to train by the run's method (sclora.method.inits.apply_method), fed what its row `reads`."""
    row = BY_NAME[spec.method]
    adapter = params.adapter
    config = lora_config(adapter.rank, adapter.alpha, adapter.dropout, adapter.target_modules)
    data = {}
    if row.reads == "subspaces":
        data["subspaces"] = load_subspaces(solve_dir(spec.beta) / f"{spec.task}.safetensors")
    elif row.reads is not None and row.reads != "task_batches":
        data[CAPTURE_ARGUMENT[row.reads]] = CaptureStats.load(capture_dir(row.reads, spec.task))
    elif row.reads == "task_batches":
        data["task_batches"] = task_batches(params, spec.task)
    # Data-free inits that draw (random_subspace, and LoRA's A under torch.manual_seed) use the run's seed.
    prepared = apply_method(model, config, spec.method, seed=spec.seed, **data)
    if row.residual:
        if initial_dir.exists():
            shutil.rmtree(initial_dir)
        save_initial_adapter(prepared, initial_dir)
    return prepared.train()


def task_batches(params: Params, task: str) -> list[dict]:
    """The task's own training batches, as the Trainer collates them (input_ids, attention_mask, labels): the
    first capture.samples_pos records in training order, capture.batch_size at a time (EVA's and LoRA-GA's data)."""
    tokenizer = load_tokenizer(params.model.path, trust_remote_code=params.model.trust_remote_code)
    return collated_batches(tokenizer, task_records(params.data.finetune[task]), params)


def collated_batches(tokenizer, records: list[dict], params: Params) -> list[dict]:
    """The first capture.samples_pos of `records`, collated as the Trainer does, capture.batch_size at a time."""
    records = records[: params.capture.samples_pos]
    dataset = ChatDataset(tokenizer, records, params.train.max_length)
    collate, size = chat_collator(tokenizer), params.capture.batch_size
    # Plain dicts: PEFT's EVA takes a dict batch, not the collator's BatchEncoding.
    return [
        dict(collate([dataset[i] for i in range(lo, min(lo + size, len(dataset)))]))
        for lo in range(0, len(dataset), size)
    ]


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
    wanted = ["testbed", "prepare", "capture", "evaluate_base"]
    if BY_NAME[spec.method].reads == "subspaces":
        wanted.append(f"solve@{spec.beta}")
    return [stage for stage in wanted if stage in locked]
