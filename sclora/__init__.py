"""sclora: knowledge-preserving LoRA fine-tuning (SC-LoRA, arXiv 2505.23724) as a production pipeline.

gather (`capture`, sclora/gather.py) -> solve (`solve_subspace`, subspace.py) -> apply (`apply_method`: any row of
methods.py; `init_lora`: its LoRA inits, inits.py)
-> train (`train`) -> share (`export_lora`).

The names below are imported on first use: every pipeline stage is its own process, and importing PEFT,
transformers and MLflow for names a stage never touches costs seconds each time.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "CaptureStats": "sclora.gather",
    "capture": "sclora.gather",
    "DataError": "sclora.data",
    "chat_batches": "sclora.data",
    "encode_chat": "sclora.data",
    "read_records": "sclora.data",
    "export_lora": "sclora.export",
    "export_merged": "sclora.export",
    "save_initial_adapter": "sclora.export",
    "apply_method": "sclora.inits",
    "init_lora": "sclora.inits",
    "post_hoc_step": "sclora.inits",
    "sclora_subspaces": "sclora.subspace",
    "DegenerateSubspaceWarning": "sclora.subspace",
    "Subspace": "sclora.subspace",
    "solve_subspace": "sclora.subspace",
    "TrainResult": "sclora.train",
    "TrainSettings": "sclora.train",
    "train": "sclora.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sclora' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
