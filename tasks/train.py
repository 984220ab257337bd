"""Stages `train@<task>-<method>-<seed>` and `train_sclora@<task>-<variant>-<beta>-<seed>`: one run each.

Initialise (sclora.init_lora from the captured statistics or the solved subspaces; `full`
trains every weight), fine-tune (sclora.train, logging the loss into the run's MLflow
child run), export a plain LoRA on the ORIGINAL base (or, for `full`, the full model),
and evaluate that export with forgetting against the base model. Output:
artifacts/runs/<run>/{model, export, eval/{metrics.json, samples.jsonl}, loss_history.json, run.json},
renamed into place when complete. Checkpoints live in artifacts/checkpoints/<run> (not a
DVC output, so DVC does not delete them): a killed run resumes from the last one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import torch

from sclora import tracking
from sclora.config import Params
from sclora.export import export_lora, save_initial_adapter
from sclora.gather import CaptureStats
from sclora.inits import init_lora
from sclora.loss_logging import MlflowLossCallback
from sclora.methods import BY_NAME, SCLORA_VARIANTS
from sclora.models import load_model, load_tokenizer, load_with_adapter, lora_config
from sclora.subspace import load_subspaces
from sclora.train import LOSS_HISTORY, MODEL, train
from tasks.artifacts import (
    CAPTURE,
    CHECKPOINTS,
    FINGERPRINTS,
    NEG,
    RUN_FILE,
    RunSpec,
    parse_run,
    pos_capture_dir,
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
    logged = {"method": spec.method, "beta": spec.beta, "seed": spec.seed, "train": settings.model_dump()}
    if spec.method != "full":
        logged["adapter"] = params.adapter.model_dump()
    with tracking.child_run(
        spec.task, spec.method, spec.beta, spec.seed,
        parent_run_id=parent, uri=params.tracking.uri, params=logged,
        tags=stage_hashes("dvc.lock", upstream) if upstream else None,
        datasets=_datasets(params, spec, fingerprints),
    ) as child:  # fmt: skip
        result = train(model, tokenizer, records, work, settings, callbacks=[MlflowLossCallback()])
        with staged_dir(spec.dir) as staging:
            export = staging / "export"
            shutil.move(str(result.model_dir), staging / MODEL)
            if spec.method == "full":
                # The trained model is the export (DVC's content-addressed cache stores the files once).
                shutil.copytree(staging / MODEL, export)
            else:
                export_lora(model, export, work / INITIAL_ADAPTER if _residual(spec) else None)
            shutil.copy(work / LOSS_HISTORY, staging / LOSS_HISTORY)
            del model
            evaluated = _exported_model(params, spec, export)
            metrics = evaluate_run(params, evaluated, tokenizer, staging / "eval", base_metrics=base_metrics_path())
            tracking.log_metrics({k: v for k, v in metrics.items() if k not in ("tasks", "forgetting_ratio")})
            tracking.log_files([staging / "eval" / "samples.jsonl"], artifact_path="eval")
            final_loss = result.loss_history[-1]["loss"] if result.loss_history else None
            summary = {
                "run": spec.name, "task": spec.task, "method": spec.method, "beta": spec.beta, "seed": spec.seed,
                "lr": settings.lr, "global_step": result.global_step, "resumed_from": result.resumed_from,
                "final_loss": final_loss, "export": "full_model" if spec.method == "full" else "lora",
                "mlflow_run_id": child.info.run_id,
            }  # fmt: skip
            write_json(staging / RUN_FILE, summary)
    shutil.rmtree(work)
    return summary


def task_records(source: str) -> list[dict]:
    path = prepared_path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prepared source '{source}' not found; run the prepare stage")
    return pq.read_table(path, columns=["id", "prompt", "response"]).to_pylist()


def initialised_model(model: torch.nn.Module, params: Params, spec: RunSpec, initial_dir: Path) -> torch.nn.Module:
    """The model ready to train: `full` as loaded, else wrapped in a LoRA adapter initialised by the method."""
    if spec.method == "full":
        return model.train()
    adapter = params.adapter
    config = lora_config(adapter.rank, adapter.alpha, adapter.dropout, adapter.target_modules)
    if spec.method in SCLORA_VARIANTS:
        subspaces = load_subspaces(solve_dir(spec.beta) / f"{spec.task}.safetensors")
        peft_model = init_lora(model, config, "sclora", subspaces=subspaces, freeze_basis=SCLORA_VARIANTS[spec.method])
    elif spec.method == "corda_ipm":
        peft_model = init_lora(model, config, spec.method, pos=CaptureStats.load(pos_capture_dir(spec.task)))
    elif spec.method == "corda_kpm":
        peft_model = init_lora(model, config, spec.method, neg=CaptureStats.load(CAPTURE / NEG))
    else:  # data-free; random_subspace draws its bases from the run's seed
        peft_model = init_lora(model, config, spec.method, seed=spec.seed)
    if _residual(spec):
        if initial_dir.exists():
            shutil.rmtree(initial_dir)
        save_initial_adapter(peft_model, initial_dir)
    return peft_model.train()


def _residual(spec: RunSpec) -> bool:
    """Whether the run's init rewrote the base weights."""
    return BY_NAME[spec.method].residual


def _exported_model(params: Params, spec: RunSpec, export: Path) -> torch.nn.Module:
    """What gets registered, loaded as a user would: the full model, or the plain LoRA on the original base."""
    model = params.model
    if spec.method == "full":
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
    if spec.method in SCLORA_VARIANTS:
        wanted.append(f"solve@{spec.beta}")
    return [stage for stage in wanted if stage in locked]
