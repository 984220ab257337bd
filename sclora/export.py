"""Export a trained adapter as something usable without sclora: a plain LoRA on the ORIGINAL base, or a merged model.

Residual methods (pissa, milora, corda, sclora) train on W_res, not W, so their adapter alone means nothing
on the original model. PEFT's `path_initial_model_for_weight_conversion` turns it into a plain LoRA of rank
2r: Delta W = B A - B0 A0 = [B | -B0] [A ; A0]. That needs the adapter as it was at init, which
`save_initial_adapter` writes right after `init_lora`, before training.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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


def is_residual_init(init_lora_weights: bool | str) -> bool:
    """True for an `init_lora_weights` that rewrites the base weights (all but PEFT's default / gaussian init)."""
    return init_lora_weights not in (True, "gaussian")


def is_residual(peft_model: PeftModel) -> bool:
    """True when the init of adapter "default" rewrote the base weights."""
    return is_residual_init(peft_model.peft_config["default"].init_lora_weights)


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


def export_lora(peft_model: PeftModel, out_dir: str | Path, initial_adapter_dir: str | Path | None = None) -> Path:
    """Save adapter "default" as a plain LoRA for the ORIGINAL base model.

    Residual methods need `initial_adapter_dir` (from `save_initial_adapter`); the result has rank 2r.
    A plain `lora` adapter is saved as it is.
    """
    out_dir = Path(out_dir)
    if not is_residual(peft_model):
        peft_model.save_pretrained(out_dir, selected_adapters=["default"])
        return out_dir
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
