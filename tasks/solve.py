"""Stage `solve@<beta>`: SC-LoRA's subspaces per task -> artifacts/solve/beta-<beta>/<task>.safetensors + spectra.json.

For every target layer of the ORIGINAL base model, the top adapter.rank eigenvectors of
M(beta) from the shared capture; the eigenvalues go to spectra.json for the report.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from sclora.capture import CaptureStats
from sclora.config import Params
from sclora.inits import sclora_subspaces
from sclora.models import load_model, lora_config
from sclora.subspace import Subspace
from tasks.artifacts import CAPTURE, NEG, SPECTRA, pos_capture_dir, solve_dir, staged_dir, write_json


def run(params: Params, item: str) -> dict:
    beta = _beta(params, item)
    model = load_model(params.model.path, dtype=params.model.dtype, trust_remote_code=params.model.trust_remote_code)
    adapter = params.adapter
    config = lora_config(adapter.rank, adapter.alpha, adapter.dropout, adapter.target_modules)
    neg = CaptureStats.load(CAPTURE / NEG)
    spectra = {}
    with staged_dir(solve_dir(beta)) as staging:
        for task in params.data.tasks:
            pos = CaptureStats.load(pos_capture_dir(task))
            subspaces = sclora_subspaces(
                model, config, pos, neg, beta, rank=adapter.rank, normalize=params.solve.normalize
            )
            save_subspaces(subspaces, staging / f"{task}.safetensors")
            spectra[task] = {name: s.eigenvalues.tolist() for name, s in subspaces.items()}
        write_json(staging / SPECTRA, spectra)
    return {"beta": beta, "tasks": list(spectra), "layers": len(next(iter(spectra.values())))}


def save_subspaces(subspaces: dict[str, Subspace], path: Path) -> None:
    """One safetensors file: `<module>.basis` (d_out, r) and `<module>.eigenvalues` (r,) per target module."""
    tensors = {}
    for name, subspace in subspaces.items():
        tensors[f"{name}.basis"] = subspace.basis.contiguous()
        tensors[f"{name}.eigenvalues"] = subspace.eigenvalues.contiguous()
    save_file(tensors, str(path))


def load_subspaces(path: Path) -> dict[str, Subspace]:
    """The subspaces `save_subspaces` wrote, by target module name."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: solved subspaces not found; run the solve stage")
    tensors = load_file(str(path))
    names = sorted({key.rsplit(".", 1)[0] for key in tensors})
    return {name: Subspace(tensors[f"{name}.basis"], tensors[f"{name}.eigenvalues"]) for name in names}


def _beta(params: Params, item: str) -> float:
    try:
        beta = float(item)
    except ValueError:
        raise ValueError(f"solve item '{item}' is not a beta") from None
    if beta not in params.solve.betas:
        raise ValueError(f"beta {item} is not in solve.betas {params.solve.betas}")
    return beta

