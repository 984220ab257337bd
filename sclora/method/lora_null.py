"""LoRA-Null's data step (Tang et al., arXiv 2503.02659): the null space of the preserved knowledge's activations.

Not in PEFT (its request, PEFT issue 2425, was closed), so written here, on the capture the pipeline already has.
The paper's code (github.com/HungerPWAY/LoRA-Null, `decompose_to_adapter2`, `singular_aware`) takes each layer's
input covariance C on the knowledge data, exactly as CorDA's code collects it (each sample's tokens divided by
their max entry, X^T X summed and divided by the sample count: sclora.method.gather's covariance), and its r singular
directions with the SMALLEST singular values, N. `sclora.method.inits.lora_null_init` then puts W N N^T into the
adapter.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from peft import LoraConfig
from peft.tuners.lora.corda import target_modules
from torch import nn

from sclora.method.subspace import lora_rank, require_stats

if TYPE_CHECKING:
    from sclora.method.gather import CaptureStats

# An eigenvalue below this share of the largest counts as zero: more than r of them and the null space the
# paper takes is an arbitrary basis of a larger one (too few knowledge tokens for the layer's width).
ZERO_SHARE = 1e-10


@torch.no_grad()
def lora_null_bases(model: nn.Module, lora_config: LoraConfig, stats: CaptureStats) -> dict[str, torch.Tensor]:
    """Per target module, the (d_in, r) float64 orthonormal basis of its input covariance's r smallest directions.

    C is symmetric positive semi-definite, so the paper's SVD of C and `eigh` give the same directions; eigh's
    ascending order gives the smallest first.
    """
    if not getattr(stats, "covariances", None):
        raise ValueError("LoRA-Null needs input covariances of the preserved data: capture with covariance=True")
    bases = {}
    for name, _ in target_modules(model, lora_config):
        require_stats(stats, name, "covariance")
        cov_sum, n_samples = stats.covariance(name)
        if n_samples <= 0:
            raise ValueError(f"{name}: the captured covariance has no samples")
        cov = cov_sum.double() / n_samples
        values, vectors = torch.linalg.eigh((cov + cov.T) / 2)
        rank = lora_rank(lora_config, name)
        if rank >= len(values):
            raise ValueError(f"{name}: rank {rank} leaves no null space in d_in = {len(values)}")
        if values[rank] <= ZERO_SHARE * values[-1]:
            warnings.warn(
                f"{name}: the preserved data's covariance has more than r = {rank} zero eigenvalues; LoRA-Null's "
                "null space is then not unique (capture more preserved tokens)",
                stacklevel=2,
            )
        bases[name] = vectors[:, :rank]
    return bases
