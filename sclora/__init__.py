"""sclora: knowledge-preserving LoRA fine-tuning (SC-LoRA, arXiv 2505.23724) as a production pipeline.

gather (`capture`, sclora/method/gather.py) -> solve (`solve_subspace`, method/subspace.py) -> apply (`apply_method`:
any row of method/table.py; `init_lora`: its LoRA inits, method/inits.py) -> train (`train`, runs/train.py) -> share
(`export_lora`, method/export.py).

The names below are imported on first use: every pipeline stage is its own process, and importing PEFT,
transformers and MLflow for names a stage never touches costs seconds each time.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "CaptureStats": "sclora.method.gather",
    "capture": "sclora.method.gather",
    "DataError": "sclora.runs.data",
    "chat_batches": "sclora.runs.data",
    "encode_chat": "sclora.runs.data",
    "read_records": "sclora.runs.data",
    "export_lora": "sclora.method.export",
    "export_merged": "sclora.method.export",
    "save_initial_adapter": "sclora.method.export",
    "apply_method": "sclora.method.inits",
    "init_lora": "sclora.method.inits",
    "post_hoc_step": "sclora.method.inits",
    "sclora_subspaces": "sclora.method.subspace",
    "DegenerateSubspaceWarning": "sclora.method.subspace",
    "Subspace": "sclora.method.subspace",
    "solve_subspace": "sclora.method.subspace",
    "TrainResult": "sclora.runs.train",
    "TrainSettings": "sclora.runs.train",
    "train": "sclora.runs.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sclora' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
