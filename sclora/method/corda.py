"""CorDA's data step (PEFT's `preprocess_corda`) on the project's captured covariances.

PEFT computes CorDA from each target module's input covariance, which its own `preprocess_corda` collects with a
forward pass over the data it is given. Here the capture (sclora.capture) has already collected it in PEFT's way, so
this module hands it to PEFT's own functions; `init_lora` then lets PEFT's `corda_init` build the adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from peft import LoraConfig
from peft.tuners.lora.corda import collect_eigens, crop_corda_eigens, target_modules
from torch import nn

from sclora.method.subspace import lora_rank, require_stats

if TYPE_CHECKING:
    from sclora.method.gather import CaptureStats


@torch.no_grad()
def corda_preprocess(model: nn.Module, lora_config: LoraConfig, stats: CaptureStats) -> None:
    """PEFT's `preprocess_corda` fed with our captured covariances instead of its own pass over the data.

    PEFT stores each target module's input covariance as `module.covariance_matrix` and then computes
    everything from it (`collect_eigens`, `crop_corda_eigens`); we set that attribute and call the same two
    functions. The covariance is PEFT's own: each sample's real tokens divided by their max entry, X^T X
    summed over samples, divided by the sample count (`sclora.capture`), so B A is PEFT's on the same samples.
    """
    if not getattr(stats, "covariances", None):
        raise ValueError("CorDA needs input covariances: capture with covariance=True")
    modules = list(target_modules(model, lora_config))
    for name, module in modules:
        require_stats(stats, name, "covariance")
        cov_sum, n_samples = stats.covariance(name)
        if n_samples <= 0:
            raise ValueError(f"{name}: the captured covariance has no samples")
        module.covariance_matrix = (cov_sum / n_samples).to(module.weight.device)
        module.corda_method = lora_config.corda_config.corda_method
        module.rank = lora_rank(lora_config, name)
    try:
        collect_eigens(model, lora_config, verbose=False)
        crop_corda_eigens(model, lora_config)
    finally:  # leave only `eigens`, which PEFT's corda_init consumes and deletes
        for _, module in modules:
            for attr in ("covariance_matrix", "corda_method", "rank"):
                if hasattr(module, attr):
                    delattr(module, attr)
