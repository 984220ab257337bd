"""Export a trained adapter as something usable without sclora: a plain LoRA on the ORIGINAL base, or a merged model.

How each method exports is its row's `export` (sclora.method.table). Residual methods (pissa, milora, corda, olora,
lora_ga, lora_null, sclora) train on W_res, not W, so their adapter alone means nothing on the original model.
PEFT's `path_initial_model_for_weight_conversion` turns it into a plain LoRA of rank 2r,
Delta W = B A - B0 A0 = [B | -B0] [A ; A0]. That needs the adapter as it was at init, which
`save_initial_adapter` writes right after `init_lora`, before training. Every LoRA export is saved with
`init_lora_weights=True`, PEFT's plain LoRA: loading it runs no init (MiCA's SVD, EVA's) and rewrites nothing.
OSF is not a LoRA and PEFT has no conversion of it to one: its export is PEFT's OSF adapter itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sclora.method.table import METHODS

if TYPE_CHECKING:  # PEFT's models come in as arguments; the registry reads `is_residual_init` without loading PEFT
    from peft import LoraConfig, PeftModel
    from transformers import PreTrainedTokenizerBase


def check_convertible(config: LoraConfig) -> None:
    """Refuse configs PEFT's conversion to plain LoRA cannot handle (found at init, not after training)."""
    if config.use_rslora and (config.rank_pattern or config.alpha_pattern):
        raise ValueError(
            "use_rslora with rank_pattern/alpha_pattern cannot be exported as a plain LoRA "
            "(PEFT's weight conversion does not support it): drop one of them"
        )


# The `init_lora_weights` values that leave the base weights alone: PEFT's default and gaussian, and those of the
# methods whose row says they are not residual (mica, eva, orthogonal). Any other value may rewrite them.
KEEPS_BASE_INITS = (
    True,
    "gaussian",
    *sorted({m.peft_init for m in METHODS if m.peft_init and not m.residual} - {True}),
)


def is_residual_init(init_lora_weights: bool | str) -> bool:
    """True for an `init_lora_weights` that rewrites the base weights (any but KEEPS_BASE_INITS)."""
    return init_lora_weights not in KEEPS_BASE_INITS


def save_initial_adapter(peft_model: PeftModel, directory: str | Path) -> Path:
    """Save the freshly initialised adapter "default" to `directory`: the reference `export_lora` subtracts."""
    directory = Path(directory)
    config = peft_model.peft_config["default"]
    check_convertible(config)
    # PEFT loads this directory as an extra adapter named after it, beside "default".
    if directory.name in peft_model.peft_config:
        raise ValueError(f"initial adapter directory {directory} is named like adapter {directory.name!r}; rename it")
    init = config.init_lora_weights
    # Saved with init_lora_weights=True: loading it later must not re-run the init on the residual weights.
    config.init_lora_weights = True
    try:
        peft_model.save_pretrained(directory, selected_adapters=["default"])
    finally:
        config.init_lora_weights = init
    return directory


def export_lora(
    peft_model: PeftModel, out_dir: str | Path, initial_adapter_dir: str | Path | None = None, adapter: str = "default"
) -> Path:
    """Save `adapter` as a plain LoRA for the ORIGINAL base model (an OSF model: its OSF adapter).

    Residual methods need `initial_adapter_dir` (from `save_initial_adapter`); the result has rank 2r.
    An adapter that left the base weights alone is saved as it is, as a plain LoRA.
    """
    out_dir = Path(out_dir)
    config = peft_model.peft_config[adapter]
    if not hasattr(config, "init_lora_weights"):  # another tuner (OSF): PEFT saves it as it is
        peft_model.save_pretrained(out_dir, selected_adapters=[adapter])
        return out_dir
    if not is_residual_init(config.init_lora_weights):
        init = config.init_lora_weights
        config.init_lora_weights = True
        try:
            peft_model.save_pretrained(out_dir, selected_adapters=[adapter])
        finally:
            config.init_lora_weights = init
        if adapter != "default":  # PEFT saves a named adapter into a subfolder of its name
            for path in (out_dir / adapter).iterdir():
                path.replace(out_dir / path.name)
            (out_dir / adapter).rmdir()
        return out_dir
    if adapter != "default":
        raise ValueError(f"only adapter 'default' of a residual init can be exported, not {adapter!r}")
    if initial_adapter_dir is None:
        raise ValueError("this adapter was trained on residual weights: pass the directory save_initial_adapter wrote")
    check_convertible(peft_model.peft_config["default"])
    initial_adapter_dir = Path(initial_adapter_dir)
    if not (initial_adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no initial adapter in {initial_adapter_dir} (adapter_config.json missing)")
    # Loading the initial adapter makes PEFT mark the active adapter trainable again; keep freeze_basis intact.
    trainable = {n: p.requires_grad for n, p in peft_model.named_parameters()}
    try:
        peft_model.save_pretrained(
            out_dir, selected_adapters=["default"], path_initial_model_for_weight_conversion=str(initial_adapter_dir)
        )
    finally:
        for n, p in peft_model.named_parameters():
            p.requires_grad_(trainable[n])
    return out_dir


def export_merged(peft_model: PeftModel, out_dir: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """Merge the adapter into the (residual) weights and save a full model directory.

    Consumes `peft_model` (PEFT merges in place): export the plain LoRA first.
    """
    out_dir = Path(out_dir)
    merged = peft_model.merge_and_unload(safe_merge=True)
    merged.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir
