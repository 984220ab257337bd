"""sclora: knowledge-preserving LoRA fine-tuning (SC-LoRA, arXiv 2505.23724) as a production pipeline.

gather (`capture`) -> solve (`solve_subspace`) -> apply (`init_lora`) -> train (`train`) -> share (`export_lora`).
"""

from sclora.capture import CaptureStats, capture
from sclora.data import DataError, chat_batches, encode_chat, read_records
from sclora.export import export_lora, export_merged, save_initial_adapter
from sclora.inits import init_lora, sclora_subspaces
from sclora.subspace import DegenerateSubspaceWarning, Subspace, solve_subspace
from sclora.train import TrainResult, TrainSettings, train

__version__ = "0.1.0"

__all__ = [
    "CaptureStats",
    "DataError",
    "DegenerateSubspaceWarning",
    "Subspace",
    "TrainResult",
    "TrainSettings",
    "capture",
    "chat_batches",
    "encode_chat",
    "export_lora",
    "export_merged",
    "init_lora",
    "read_records",
    "save_initial_adapter",
    "sclora_subspaces",
    "solve_subspace",
    "train",
]
