"""The trade-off forecast from the capture alone: how much of each dataset's output energy SC-LoRA's subspace holds.

For a layer with token-summed outputs Y+ (D+) and Y- (D-) and the rank-r basis U solved at beta, the share of
D+'s output energy in the subspace is tr(U^T Cov+ U) / tr(Cov+) = ||U^T Y+||^2 / ||Y+||^2 (any scale of Cov+
cancels), and the same for D-. A high D+ share is room to learn the task; a high D- share is the preserved
knowledge the adapter can reach. Solving is cheap, so this runs for a fine grid of beta with no training. Over
layers the shares are averaged (each layer's covariances have unit trace under `solve.normalize: trace`).
No library computes this; it is the paper's objective read back per dataset.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

if TYPE_CHECKING:
    import torch


def energy_share(basis: torch.Tensor, outputs: torch.Tensor) -> float:
    """The share of the energy of `outputs` (d_out, N) in span(`basis`) (d_out, r, orthonormal columns)."""
    total = float(outputs.square().sum())
    if total == 0.0:
        raise ValueError("outputs are all zero: no energy to share")
    return float((basis.T.to(outputs.dtype) @ outputs).square().sum()) / total


def forecast_grid(step: float) -> list[float]:
    """0, step, 2 step, ..., 1 (rounded to 6 decimals, so that 0.15 is 0.15)."""
    count = round(1.0 / step)
    if abs(count * step - 1.0) > 1e-9:
        raise ValueError(f"forecast step {step:g} does not divide [0, 1] evenly")
    return [round(i / count, 6) for i in range(count + 1)]


def energy_forecast(
    model, lora_config, pos, neg, betas: Sequence[float], *, rank: int | None = None, normalize: str = "none"
) -> dict:
    """Per beta: D+ and D- energy shares of each target layer and their mean over layers.

    Returns {"betas", "pos_share", "neg_share" (means over layers), "degenerate_layers" (per beta: layers whose
    top-r eigenspace is not unique, where any basis of it would do and the shares are one choice of many),
    "layers": {name: {"pos_share", "neg_share"}}}.
    """
    # The solve (torch, PEFT) loads here only: the report and select_beta read a forecast without computing one.
    from sclora.method.subspace import DegenerateSubspaceWarning, layer_outputs, layer_statistics, solve_layer

    layers, degenerate = {}, [0] * len(betas)
    for name, layer in layer_statistics(model, lora_config, pos, neg, rank):
        y_pos = layer_outputs("pos", layer.weight, layer.pos, layer.bias, layer.pos_tokens)
        y_neg = layer_outputs("neg", layer.weight, layer.neg, layer.bias, layer.neg_tokens)
        shares = {"pos_share": [], "neg_share": []}
        for i, beta in enumerate(betas):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DegenerateSubspaceWarning)
                basis = solve_layer(name, layer, beta, normalize).basis
            degenerate[i] += any(issubclass(w.category, DegenerateSubspaceWarning) for w in caught)
            shares["pos_share"].append(energy_share(basis, y_pos))
            shares["neg_share"].append(energy_share(basis, y_neg))
        layers[name] = shares
    if not layers:
        raise ValueError("no target layer to forecast")
    mean = {key: [sum(s[key][i] for s in layers.values()) / len(layers) for i in range(len(betas))]
            for key in ("pos_share", "neg_share")}  # fmt: skip
    return {"betas": list(betas), **mean, "degenerate_layers": degenerate, "layers": layers}


def share_at(forecast: dict, key: str, beta: float) -> float:
    """A forecast share at any beta in [0, 1]: linear between the grid's betas (exact on them)."""
    return float(np.interp(beta, forecast["betas"], forecast[key]))


def rank_correlation(forecast: dict, measured: dict) -> dict | None:
    """Spearman's rank correlation between forecast and measured values on the keys both have (betas, builds,
    ranks, preserved sets: whatever was varied): {"rho", "p", "n"}; None below 3 keys or when either side has no
    spread. The p-value is exact (two-sided): `scipy.stats.permutation_test` over every pairing of the few points
    (`spearmanr`'s own p is a t approximation, 0.037 for rho 0.9 with n = 5 where the exact p is 0.083)."""
    keys = sorted(set(forecast) & set(measured))
    x, y = [forecast[k] for k in keys], [measured[k] for k in keys]
    if len(keys) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    rho = float(stats.spearmanr(x, y).statistic)
    exact = stats.permutation_test(
        (x,), lambda shuffled: stats.spearmanr(shuffled, y).statistic, permutation_type="pairings",
        n_resamples=math.factorial(min(len(keys), 8)), alternative="two-sided", random_state=0,
    )  # fmt: skip
    return {"rho": rho, "p": float(exact.pvalue), "n": len(keys), "exact": len(keys) <= 8}
