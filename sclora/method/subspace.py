"""Solve for SC-LoRA's subspace: the top eigenvectors of M(beta) = (1 - beta) Cov+ - beta Cov-.

Cov+ and Cov- are the uncentred covariances of one layer's OUTPUTS y_i = W s_i (+ T_i b), where s_i is
sample i's token-summed input and T_i its token count. M has rank at most N+ + N-,
so with Y = [Y+, Y-] scaled by the square roots of the weights, M = Y D Y^T (D = signs) and a thin QR
Y = Q R reduces the problem to eigh(R D R^T), which is small: no d_out x d_out matrix is ever built when
N+ + N- < d_out. Everything is float64.

`solve_subspace` solves one layer; `sclora_subspaces` every target layer of a model from its capture;
`save_subspaces` / `load_subspaces` keep them on disk between the solve and train stages.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from peft import LoraConfig
from peft.tuners.lora.corda import target_modules
from peft.utils.other import get_pattern_key
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

if TYPE_CHECKING:
    from sclora.method.gather import CaptureStats

NORMALIZE = ("none", "trace")
ROW_BLOCK = 1024  # rows of a wide W made float64 at a time (here and in sclora.method.inits), never the whole of it
# Two eigenvalues closer than this (relative to the largest |eigenvalue|) are treated as equal.
_TIE = 1e-9


class DegenerateSubspaceWarning(UserWarning):
    """The top-r eigenspace of M(beta) is not unique (the r-th and (r+1)-th eigenvalues tie)."""


@dataclass
class Subspace:
    """Orthonormal basis (d_out, rank) of the top eigenvectors of M(beta), eigenvalues descending."""

    basis: torch.Tensor
    eigenvalues: torch.Tensor

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    def truncate(self, rank: int) -> Subspace:
        """The same solve at a smaller rank (the top eigenvectors nest, so this is a slice)."""
        if not 1 <= rank <= self.rank:
            raise ValueError(f"rank {rank} is outside [1, {self.rank}] for this subspace")
        return Subspace(self.basis[:, :rank], self.eigenvalues[:rank])


def _matrix(name: str, value, ndim: int, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    t = torch.as_tensor(value).detach().to(device="cpu", dtype=dtype)
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def layer_outputs(name: str, weight, inputs, bias=None, tokens=None) -> torch.Tensor:
    """Y (d_out, N): the token-summed layer outputs W s_i + T_i b of one dataset."""
    s = _matrix(name, inputs, 2)
    if s.shape[1] != weight.shape[1]:
        raise ValueError(f"{name} has {s.shape[1]} features but weight expects d_in={weight.shape[1]}")
    # Row blocks of W in float64, never all of it: a (d_out, d_in) float64 copy is the solve's largest allocation.
    y = torch.cat([rows.to(torch.float64) @ s.T for rows in weight.split(ROW_BLOCK)])
    if bias is not None and s.shape[0] > 0:
        if tokens is None:
            raise ValueError(f"{name}_tokens is required when bias is given (y_i = W s_i + T_i b)")
        t = _matrix(f"{name}_tokens", tokens, 1)
        if t.shape[0] != s.shape[0]:
            raise ValueError(f"{name}_tokens has {t.shape[0]} entries but {name} has {s.shape[0]} samples")
        y = y + bias[:, None] * t[None, :]
    return y


def _scale(name: str, y: torch.Tensor, weight: float, normalize: str) -> torch.Tensor:
    """Column scale c so that weight * Cov = (c Y)(c Y)^T; Cov = Y Y^T / N, or / trace under 'trace'."""
    if weight == 0.0:
        return y[:, :0]
    if y.shape[1] == 0:
        raise ValueError(f"{name} is empty but carries weight {weight:g} in M(beta)")
    denom = float(y.square().sum()) if normalize == "trace" else float(y.shape[1])
    if denom == 0.0:
        raise ValueError(f"{name} outputs are all zero: cannot normalise its covariance to unit trace")
    return y * (weight / denom) ** 0.5


def _complement(q: torch.Tensor, count: int) -> torch.Tensor:
    """`count` orthonormal vectors orthogonal to the columns of q (the exact null space of M)."""
    gen = torch.Generator().manual_seed(0)  # any basis of a degenerate eigenspace is valid; keep it reproducible
    g = torch.randn(q.shape[0], count, generator=gen, dtype=torch.float64)
    for _ in range(2):  # project twice: one pass loses orthogonality in floating point
        g = g - q @ (q.T @ g)
    return torch.linalg.qr(g).Q


def solve_subspace(
    weight,
    pos,
    neg,
    beta: float,
    rank: int,
    normalize: str = "none",
    bias=None,
    pos_tokens=None,
    neg_tokens=None,
) -> Subspace:
    """Top-`rank` eigenvectors of M(beta) for one layer.

    weight: (d_out, d_in), PyTorch layout. pos/neg: (N, d_in) token-summed inputs of D+ and D-.
    bias: optional (d_out,); then pos_tokens/neg_tokens (N,) give each sample's token count T_i.
    normalize: "none" (Cov = Y Y^T / N) or "trace" (each covariance scaled to unit trace).
    """
    if not isinstance(beta, numbers.Real) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    w = _matrix("weight", weight, 2, dtype=None)  # its own dtype; _outputs takes row blocks of it in float64
    d_out, d_in = w.shape
    b = None
    if bias is not None:
        b = _matrix("bias", bias, 1)
        if b.shape[0] != d_out:
            raise ValueError(f"bias has {b.shape[0]} entries but weight has d_out={d_out}")
    y_pos = layer_outputs("pos", w, pos, b, pos_tokens)
    y_neg = layer_outputs("neg", w, neg, b, neg_tokens)
    if y_pos.shape[1] + y_neg.shape[1] == 0:
        raise ValueError("pos and neg are both empty: no statistics to solve from")
    y_pos = _scale("pos", y_pos, 1.0 - beta, normalize)
    y_neg = _scale("neg", y_neg, float(beta), normalize)
    samples = y_pos.shape[1] + y_neg.shape[1]
    if not isinstance(rank, numbers.Integral) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if rank > min(d_out, d_in):
        raise ValueError(f"rank {rank} exceeds min(d_out, d_in) = {min(d_out, d_in)}")
    if rank > samples:
        raise ValueError(f"rank {rank} exceeds the {samples} samples that enter M(beta={beta:g})")

    y = torch.cat([y_pos, y_neg], dim=1)
    signs = torch.cat([torch.ones(y_pos.shape[1]), -torch.ones(y_neg.shape[1])]).to(torch.float64)
    q, r = torch.linalg.qr(y)  # reduced: q (d_out, k), k = min(d_out, N)
    values, vectors = torch.linalg.eigh((r * signs) @ r.T)
    # The full spectrum is eigh's k values plus d_out - k exact zeros from the complement of span(Q).
    zeros = d_out - q.shape[1]
    spectrum = torch.cat([values, torch.zeros(zeros, dtype=torch.float64)])
    # Stable sort, eigh's values first: among ties, take vectors from span(Q) before the complement.
    order = torch.sort(-spectrum, stable=True).indices[: rank + 1]
    top = spectrum[order]
    if rank < d_out and top[rank - 1] - top[rank] <= _TIE * spectrum.abs().max():
        warnings.warn(
            f"M(beta={beta:g}) has tied eigenvalues at rank {rank} ({float(top[rank - 1]):.3g}): the subspace "
            f"is not unique (too few preserved samples for beta near 1, or too few samples for rank {rank})",
            DegenerateSubspaceWarning,
            stacklevel=2,
        )
    order = order[:rank]
    inside = order < q.shape[1]
    basis = torch.empty(d_out, rank, dtype=torch.float64)
    basis[:, inside] = q @ vectors[:, order[inside]]
    if not inside.all():
        basis[:, ~inside] = _complement(q, int((~inside).sum()))
    return Subspace(basis, top[:rank].clone())


# The whole model: one solve per target layer, from the capture.


class LayerStatistics(NamedTuple):
    """What M(beta) of one target layer is solved from: its weight (d_out, d_in), bias, and the captured
    token-summed inputs (and token counts) of D+ and D-."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    pos: torch.Tensor
    pos_tokens: torch.Tensor
    neg: torch.Tensor
    neg_tokens: torch.Tensor
    rank: int


def layer_statistics(
    model: nn.Module, lora_config: LoraConfig, pos: CaptureStats, neg: CaptureStats, rank: int | None = None
) -> Iterator[tuple[str, LayerStatistics]]:
    """Per target layer of the ORIGINAL `model`, in model order: its name and LayerStatistics. The rank is the
    layer's LoRA rank (lora_config.r or rank_pattern), or `rank` when given."""
    for name, module in target_modules(model, lora_config):
        require_stats(pos, name, "pos")
        require_stats(neg, name, "neg")
        weight = module.weight.T if isinstance(module, Conv1D) else module.weight  # solve in (d_out, d_in)
        bias = None if module.bias is None else module.bias.detach()
        yield name, LayerStatistics(weight.detach(), bias, *pos.inputs(name), *neg.inputs(name),
                                    rank or lora_rank(lora_config, name))  # fmt: skip


def solve_layer(name: str, layer: LayerStatistics, beta: float, normalize: str) -> Subspace:
    """solve_subspace on one layer's statistics; its errors and warnings name the layer."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            subspace = solve_subspace(
                layer.weight,
                layer.pos,
                layer.neg,
                beta,
                layer.rank,
                normalize,
                bias=layer.bias,
                pos_tokens=layer.pos_tokens,
                neg_tokens=layer.neg_tokens,
            )
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    for w in caught:  # re-issue with the layer's name, which the solver does not know
        warnings.warn(f"{name}: {w.message}", w.category, stacklevel=3)
    return subspace


def sclora_subspaces(
    model: nn.Module,
    lora_config: LoraConfig,
    pos: CaptureStats,
    neg: CaptureStats,
    beta: float,
    *,
    rank: int | None = None,
    normalize: str = "none",
) -> dict[str, Subspace]:
    """Solve M(beta) for every target layer of the ORIGINAL `model` (before init_lora changes its weights).

    Each layer is solved at its LoRA rank (lora_config.r or rank_pattern), or at `rank` when given
    (one solve at r_max then serves every smaller rank). The eigenvalues are the per-layer diagnostics.
    """
    return {name: solve_layer(name, layer, beta, normalize)
            for name, layer in layer_statistics(model, lora_config, pos, neg, rank)}  # fmt: skip


def lora_rank(config: LoraConfig, name: str) -> int:
    """The module's LoRA rank, as PEFT resolves it (rank_pattern, else r)."""
    return config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), name), config.r)


def require_stats(stats: CaptureStats, name: str, which: str) -> None:
    if name not in stats.module_keys:
        raise ValueError(f"target module {name} is missing from the {which} CaptureStats")


# Subspaces on disk (the solve stage writes them, the train stage reads them).


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
