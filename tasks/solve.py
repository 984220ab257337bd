"""Stage `solve@<beta>`: SC-LoRA's subspaces per task -> artifacts/solve/beta-<beta>/<task>.safetensors + spectra.json.

For every target layer of the ORIGINAL base model, the top adapter.rank eigenvectors of
M(beta) from the shared capture; the eigenvalues go to spectra.json for the report.
"""

from __future__ import annotations

from sclora.method.gather import CaptureStats
from sclora.method.subspace import save_subspaces, sclora_subspaces
from sclora.ops.config import Params
from sclora.runs.models import lora_config
from tasks.artifacts import CAPTURE, NEG, SPECTRA, load_base, pos_capture_dir, solve_dir, staged_dir, write_json


def run(params: Params, item: str) -> dict:
    beta = _beta(params, item)
    model = load_base(params)
    adapter = params.adapter
    config = lora_config(adapter.rank, adapter.alpha, adapter.dropout, adapter.target_modules)
    neg = CaptureStats.load(CAPTURE / NEG)
    spectra = {}
    with staged_dir(solve_dir(beta)) as staging:
        for task in params.data.finetune:
            pos = CaptureStats.load(pos_capture_dir(task))
            subspaces = sclora_subspaces(
                model, config, pos, neg, beta, rank=adapter.rank, normalize=params.solve.normalize
            )
            save_subspaces(subspaces, staging / f"{task}.safetensors")
            spectra[task] = {name: s.eigenvalues.tolist() for name, s in subspaces.items()}
        write_json(staging / SPECTRA, spectra)
    return {"beta": beta, "tasks": list(spectra), "layers": len(next(iter(spectra.values())))}


def _beta(params: Params, item: str) -> float:
    try:
        beta = float(item)
    except ValueError:
        raise ValueError(f"solve item '{item}' is not a beta") from None
    if beta not in params.solve.betas:
        raise ValueError(f"beta {item} is not in solve.betas {params.solve.betas}")
    return beta
