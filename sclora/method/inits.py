"""Apply a method to a model: SC-LoRA and every method it is compared with (the rows of sclora.method.table).

gather (gather.py) -> solve (subspace.py) -> apply (this file). `apply_method` is the one place that decides,
from a method's row and name, which scheme runs, as PEFT's `update_layer` does; `post_hoc_step` likewise for the
steps that change a trained adapter. PEFT's own methods go through PEFT's code: `lora`, `pissa`, CorDA, `mica`,
`olora`, `orthogonal`, EVA (`initialize_lora_eva_weights` on the task's batches), LoRA-GA (`preprocess_loraga`
on the task's gradients), OSF (PEFT's tuner) and intruder-dimension reduction (`reduce_intruder_dimension`).
MiLoRA, LoRA-Null and SC-LoRA are not in PEFT and are written here, one function each, in the style of PEFT's
`pissa_init`: they run on the LoRA layers PEFT has just created, so rank, scaling (alpha / r, rslora,
rank_pattern, alpha_pattern) and `fan_in_fan_out` are PEFT's. (Checks and solves that must run before the model
is wrapped resolve ranks with PEFT's own `get_pattern_key`, as corda.py does.)

Residual methods rewrite the base weights so that W_res + scaling * B A == W at init (their row says so).
`random_subspace` is a control, not a published method: SC-LoRA's construction on a seeded random
orthonormal basis, the same kind and size of residual init with no data, so that SC-LoRA against it
measures what choosing the subspace is worth.
"""

from __future__ import annotations

import copy
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import (
    EvaConfig,
    LoraConfig,
    LoraGAConfig,
    OSFConfig,
    PeftModel,
    get_peft_model,
    initialize_lora_eva_weights,
    preprocess_loraga,
)
from peft.tuners.lora import AstraConfig, LoraLayer, preprocess_astra
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora.config import CordaConfig
from peft.tuners.lora.corda import target_modules
from peft.tuners.lora.intruders import reduce_intruder_dimension
from peft.tuners.lora.model import LoraModel
from peft.utils import transpose
from torch import nn
from transformers.pytorch_utils import Conv1D

from sclora.method.corda import corda_preprocess
from sclora.method.export import check_convertible
from sclora.method.lora_null import lora_null_bases
from sclora.method.subspace import ROW_BLOCK, Subspace, lora_rank, sclora_subspaces
from sclora.method.table import BY_NAME, INITS, NAMES

if TYPE_CHECKING:
    from sclora.method.gather import CaptureStats

METHODS = INITS
RESIDUAL_METHODS = tuple(name for name in INITS if BY_NAME[name].residual)
# The captures a row's `reads` can name: which of init_lora's arguments carries each.
CAPTURE_ARGUMENT = {"pos_covariance": "pos", "neg_covariance": "neg"}


def apply_method(
    model: nn.Module,
    lora_config: LoraConfig,
    method: str,
    *,
    pos: CaptureStats | None = None,
    neg: CaptureStats | None = None,
    subspaces: Mapping[str, Subspace | torch.Tensor] | None = None,
    task_batches: Sequence[Mapping[str, torch.Tensor]] | None = None,
    seed: int = 0,
) -> nn.Module:
    """`model` ready to train by `method` (any row of sclora.method.table): as it is for full fine-tuning, in PEFT's
    tuner for a tuner, else wrapped in a LoRA adapter "default" by its row's init (a post-hoc method trains the
    adapter it starts from; `post_hoc_step` changes it after training). The data arguments are init_lora's."""
    if method not in BY_NAME:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(NAMES)}")
    row = BY_NAME[method]
    if row.kind == "full":
        return model
    if row.kind == "tuner":
        return osf_model(model, lora_config)  # the one tuner of the table
    return init_lora(
        model, lora_config, row.init, pos=pos, neg=neg, subspaces=subspaces, task_batches=task_batches,
        freeze_basis=row.freeze_basis, seed=seed,
    )  # fmt: skip


def post_hoc_step(
    peft_model: PeftModel, method: str, value: float, *, alignment: Mapping[str, torch.Tensor] | None = None
) -> str:
    """Apply post-hoc `method` at its knob's `value` to the trained adapter "default"; returns the new adapter's
    name, now the active one ("default" stays as trained). safe_lora reads `alignment` (layer -> W_aligned -
    W_unaligned, `alignment_directions`)."""
    if BY_NAME[method].kind != "post_hoc":
        raise ValueError(f"method {method!r} has no post-hoc step")
    name = f"{method}_{value:g}".replace(".", "_")
    match method:
        case "lora_intruder":
            # PEFT's defaults for what counts as an intruder (top_k=10, threshold_epsilon=0.5); lambda is the knob.
            reduce_intruder_dimension(peft_model, "default", name, mitigation_lambda=value, logging_sink=None)
        case "wise":
            # theta_0 + alpha (theta_ft - theta_0): LoRA starts at B = 0, so theta_ft - theta_0 = s B A; B scales.
            _copy_adapter(peft_model, name, lambda layer_name, a, b: (a, value * b))
        case "safe_lora":
            if alignment is None:
                raise ValueError("safe_lora needs the aligned-minus-unaligned weights of an aligned model's unaligned "
                                 "twin (model.unaligned): the testbed has none")  # fmt: skip
            _copy_adapter(
                peft_model, name, lambda layer_name, a, b: (a, safe_lora_b(alignment[layer_name], a, b, value))
            )
        case _:
            raise AssertionError(f"post-hoc method {method!r} has a row but no branch in post_hoc_step")
    peft_model.set_adapter(name)
    return name


def _copy_adapter(peft_model: PeftModel, name: str, new_factors) -> None:
    """A new adapter `name` beside "default", each layer's (A, B) the trained ones through `new_factors`."""
    peft_model.add_adapter(name, copy.deepcopy(peft_model.peft_config["default"]))
    with torch.no_grad():
        for layer_name, layer in lora_layers(peft_model):
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            new_a, new_b = new_factors(layer_name, a, b)
            layer.lora_A[name].weight.copy_(new_a)
            layer.lora_B[name].weight.copy_(new_b)


def safe_lora_b(direction: torch.Tensor, a: torch.Tensor, b: torch.Tensor, threshold: float) -> torch.Tensor:
    """Safe LoRA (arXiv 2405.16833) on one layer: V = W_aligned - W_unaligned (d_out, d_in), C = V V^T / ||V||_F;
    where the cosine similarity of the update B A and its projection C B A is below `threshold`, the update is
    projected, B <- C B; else B stays."""
    v = direction.double()
    projector = v @ v.T / torch.linalg.matrix_norm(v)
    delta, projected = b.double() @ a.double(), projector @ b.double() @ a.double()
    norms = torch.linalg.matrix_norm(delta) * torch.linalg.matrix_norm(projected)
    similarity = float((delta * projected).sum() / norms) if float(norms) > 0 else 1.0
    return (projector @ b.double()).to(b.dtype) if similarity < threshold else b


def alignment_directions(aligned: nn.Module, unaligned: nn.Module, lora_config: LoraConfig) -> dict[str, torch.Tensor]:
    """Per target layer of `lora_config`, W_aligned - W_unaligned (d_out, d_in): Safe LoRA's alignment matrix."""
    theirs = dict(unaligned.named_modules())
    return {name: (module.weight - theirs[name].weight).detach().float()
            for name, module in target_modules(aligned, lora_config)}  # fmt: skip


def osf_model(model: nn.Module, lora_config: LoraConfig) -> PeftModel:
    """PEFT's OSF on the LoRA config's targets, at LoRA's trainable size.

    OSF freezes each weight's top `effective_rank` singular directions and trains the remaining
    k - effective_rank (k = min(d_out, d_in)) as U_low, S_low, V_low. With effective_rank = k - r per layer (r:
    the LoRA rank of that layer), it trains r (d_out + d_in + 1) numbers where LoRA trains r (d_out + d_in).
    """
    modules = _targets(model, lora_config, linear_only=True)
    pattern = {}
    for name, module in modules.items():
        rank, smaller = lora_rank(lora_config, name), min(_shape(module))
        if rank >= smaller:
            raise ValueError(f"{name}: rank {rank} leaves OSF nothing to freeze (min(d_out, d_in) = {smaller})")
        pattern[f"^{re.escape(name)}$"] = smaller - rank
    config = OSFConfig(
        target_modules=sorted(lora_config.target_modules), rank_pattern=pattern, task_type=lora_config.task_type
    )
    return get_peft_model(model, config)


def _read_stats(method: str, pos, neg, task_batches) -> CaptureStats | None:
    """The capture a row reads (`pos` or `neg`, by its `reads`), checked present, or None; a row reading the task's
    batches without them fails here."""
    row, stats = BY_NAME[method], None
    if row.reads in CAPTURE_ARGUMENT:
        which = CAPTURE_ARGUMENT[row.reads]
        stats = pos if which == "pos" else neg
        if stats is None:
            raise ValueError(f"{method} needs `{which}` CaptureStats captured with covariance=True")
    if row.reads == "task_batches" and not task_batches:
        raise ValueError(f"{method} needs task_batches: the task's training batches")
    return stats


def init_lora(
    model: nn.Module,
    lora_config: LoraConfig,
    method: str,
    pos: CaptureStats | None = None,
    neg: CaptureStats | None = None,
    beta: float | None = None,
    *,
    subspaces: Mapping[str, Subspace | torch.Tensor] | None = None,
    task_batches: Sequence[Mapping[str, torch.Tensor]] | None = None,
    normalize: str = "none",
    freeze_basis: bool = False,
    seed: int = 0,
) -> PeftModel:
    """Wrap `model` (in place, as `get_peft_model` does) in a LoRA adapter "default" initialised by `method`.

    What a method reads is its row's `reads`. corda_ipm: `pos` captured with covariance=True (D+, the task);
    corda_kpm, lora_null: `neg` captured with covariance=True (D-, the knowledge to keep). eva, lora_ga:
    `task_batches`, the task's training batches (input_ids, attention_mask, labels). sclora: `pos`, `neg` and
    `beta` (solved here with `normalize`), or `subspaces` from `sclora_subspaces` (module name -> Subspace
    or a (d_out, >= r) orthonormal basis; solved at a larger rank is fine, the top r columns are used).
    `freeze_basis` (sclora only) keeps B fixed so the adapter output stays in the subspace while training.
    random_subspace: no data; `seed` draws its bases (`random_subspaces`). orthogonal draws from torch's
    global generator, as PEFT does. The others need no data.
    Residual methods: call `sclora.method.export.save_initial_adapter` right after this, before training.
    """
    config, modules = _checked_config(model, lora_config, method, freeze_basis)
    stats = _read_stats(method, pos, neg, task_batches)

    # One branch per scheme: what it computes before PEFT wraps the model, and what it writes into the layers after.
    match method:
        case "lora" | "pissa" | "mica" | "olora" | "orthogonal" | "nora":
            return get_peft_model(model, config)  # PEFT's own init, from `init_lora_weights`
        case "astra":
            with tempfile.TemporaryDirectory(prefix="sclora-astra-") as cache:
                # Astra keeps its eigenvectors in a cache file: one per init, gone once the layers hold them.
                config = replace(config, astra_config=AstraConfig(cache_file=str(Path(cache) / "astra.pt")))
                preprocess_astra(model, config, run_model=lambda: _forward_over(model, task_batches))
                return get_peft_model(model, config)
        case "corda_ipm" | "corda_kpm":
            corda_preprocess(model, config, stats)
            return get_peft_model(model, config)
        case "eva":
            peft_model = get_peft_model(model, config)
            initialize_lora_eva_weights(peft_model, dataloader=list(task_batches), show_progress_bar=False)
            return peft_model
        case "lora_ga":
            preprocess_loraga(model, config, lambda: _backward_over(model, task_batches))
            return get_peft_model(model, config)
        case "milora":
            peft_model = get_peft_model(model, config)
            for _, layer in lora_layers(peft_model):
                milora_init(layer, "default")
            return peft_model
        case "lora_null":
            bases = lora_null_bases(model, config, stats)
            peft_model = get_peft_model(model, config)
            for name, layer in lora_layers(peft_model):
                lora_null_init(layer, "default", bases[name])
            return peft_model
        case "random_subspace":
            return _in_subspaces(model, config, modules, random_subspaces(model, config, seed), freeze_basis=False)
        case "sclora":
            if subspaces is not None and (pos is not None or neg is not None or beta is not None):
                raise ValueError("sclora takes either precomputed subspaces or pos/neg/beta, not both")
            if subspaces is None:
                if pos is None or neg is None:
                    raise ValueError("sclora needs pos and neg CaptureStats (or precomputed subspaces)")
                if beta is None:
                    raise ValueError("sclora needs beta (or precomputed subspaces)")
                subspaces = sclora_subspaces(model, config, pos, neg, beta, normalize=normalize)
            return _in_subspaces(model, config, modules, subspaces, freeze_basis=freeze_basis)
    raise AssertionError(f"init {method!r} has a row but no branch in init_lora")  # a table row added without code


def _checked_config(
    model: nn.Module, lora_config: LoraConfig, method: str, freeze_basis: bool
) -> tuple[LoraConfig, dict[str, nn.Module]]:
    """`lora_config` with the method's PEFT init (and PEFT's sub-config of it, at PEFT's defaults), and the target
    layers, after every check that needs no data: one-line errors before anything is computed."""
    if method not in METHODS:
        raise ValueError(f"unknown init method {method!r}; expected one of {', '.join(METHODS)}")
    row = BY_NAME[method]
    if lora_config.init_lora_weights not in (True, row.peft_init):
        raise ValueError(
            f"lora_config.init_lora_weights={lora_config.init_lora_weights!r} conflicts with method {method!r}; "
            "leave it at its default, init_lora sets it"
        )
    if method == "olora" and lora_config.fan_in_fan_out:
        raise ValueError("PEFT's olora_init does not support fan_in_fan_out (Conv1D) layers; target Linear layers")
    if freeze_basis and method != "sclora":
        raise ValueError(f"freeze_basis applies to method 'sclora' only, not {method!r}")
    if row.residual:
        check_convertible(lora_config)
        if lora_config.use_dora:
            raise ValueError(f"use_dora is not supported with the residual method {method!r}")
    extra = {
        "corda": {"corda_config": CordaConfig(corda_method=method.removeprefix("corda_"))},
        "eva": {"eva_config": EvaConfig()},
        "lora_ga": {"lora_ga_config": LoraGAConfig()},
    }.get(row.peft_init, {})
    config = replace(lora_config, init_lora_weights=row.peft_init, **extra)
    modules = _targets(model, config, linear_only=row.residual)
    for name, module in modules.items() if row.residual else ():
        rank, shape = lora_rank(config, name), _shape(module)
        if rank > min(shape):
            raise ValueError(f"{name}: rank {rank} exceeds min(d_out, d_in) = {min(shape)}")
    return config, modules


def _in_subspaces(
    model: nn.Module,
    config: LoraConfig,
    modules: Mapping[str, nn.Module],
    subspaces: Mapping[str, Subspace | torch.Tensor],
    freeze_basis: bool,
) -> PeftModel:
    """SC-LoRA's construction (`sclora_init`) on every target layer, each in its own (d_out, >= r) basis."""
    for name, module in modules.items():
        if name not in subspaces:
            raise ValueError(f"no subspace for target module {name}")
        shape, (d_out, _), r = tuple(_basis(subspaces[name]).shape), _shape(module), lora_rank(config, name)
        if len(shape) != 2 or shape[0] != d_out or shape[1] < r:
            raise ValueError(f"{name}: subspace basis {shape} does not fit d_out={d_out}, rank {r}")
    peft_model = get_peft_model(model, config)
    for name, layer in lora_layers(peft_model):
        sclora_init(layer, "default", subspaces[name], freeze_basis=freeze_basis)
    return peft_model


@torch.no_grad()
def _forward_over(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """Astra's `run_model`: a forward pass over every batch (its hooks collect the layers' outputs)."""
    for batch in batches:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def _backward_over(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """LoRA-GA's `train_step`: the loss of every batch, backpropagated (PEFT averages the gradients)."""
    for batch in batches:
        model(**batch).loss.backward()


def lora_layers(peft_model: PeftModel) -> list[tuple[str, LoraLayer]]:
    """(name in the original model, LoRA layer) for every adapted layer."""
    return [(n, m) for n, m in peft_model.base_model.model.named_modules() if isinstance(m, LoraLayer)]


def random_subspaces(model: nn.Module, lora_config: LoraConfig, seed: int) -> dict[str, torch.Tensor]:
    """Per target layer, a (d_out, r) orthonormal basis drawn uniformly (Haar) from one generator seeded `seed`,
    layer after layer in model order: the same seed and model give the same bases."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in target_modules(model, lora_config):
        d_out, rank = _shape(module)[0], lora_rank(lora_config, name)
        gaussian = torch.randn(d_out, rank, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        out[name] = q * torch.sign(torch.diagonal(r))  # signs fixed by R's diagonal: Haar-distributed
    return out


@torch.no_grad()
def sclora_init(
    layer: LoraLayer, adapter_name: str, subspace: Subspace | torch.Tensor, freeze_basis: bool = False
) -> None:
    """SC-LoRA: B = U_r, A = U_r^T W / scaling, W_res = W - scaling B A = (I - U_r U_r^T) W.

    The bias (if any) stays in the base layer untouched: the adapter only ever adds B A x.
    """
    basis = _basis(subspace)
    base = layer.get_base_layer()
    weight = transpose(base.weight, layer.fan_in_fan_out)  # its own dtype: float64 a block of rows at a time
    r, scaling = layer.r[adapter_name], layer.scaling[adapter_name]
    if basis.ndim != 2 or basis.shape[0] != weight.shape[0] or basis.shape[1] < r:
        raise ValueError(
            f"subspace basis of shape {tuple(basis.shape)} does not fit layer with d_out={weight.shape[0]}, rank {r}"
        )
    b = basis[:, :r].to(weight.device, torch.float64)
    a = sum(b[rows].T @ weight[rows].double() for rows in _row_blocks(weight))  # U_r^T W
    _set_adapter(layer, adapter_name, weight, a=a / scaling, b=b)
    if freeze_basis:
        layer.lora_B[adapter_name].weight.requires_grad_(False)


@torch.no_grad()
def milora_init(layer: LoraLayer, adapter_name: str) -> None:
    """MiLoRA (arXiv 2406.09044): the r MINOR singular components of W go into the adapter, split as PiSSA does.

    W = U S V^T; A = sqrt(S_r / scaling) V_r^T, B = U_r sqrt(S_r / scaling) over the r smallest singular values.
    """
    base = layer.get_base_layer()
    weight = transpose(base.weight, layer.fan_in_fan_out).to(torch.float64)
    r, scaling = layer.r[adapter_name], layer.scaling[adapter_name]
    if r > min(weight.shape):
        raise ValueError(f"milora rank {r} exceeds min(d_out, d_in) of a layer {tuple(weight.shape)}")
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = (s[-r:] / scaling).sqrt()
    _set_adapter(layer, adapter_name, weight, a=root[:, None] * vh[-r:], b=u[:, -r:] * root)


@torch.no_grad()
def lora_null_init(layer: LoraLayer, adapter_name: str, null_basis: torch.Tensor) -> None:
    """LoRA-Null (arXiv 2503.02659): W N N^T, W projected on the null space N of the preserved data's activations
    (`sclora.method.lora_null`), into the adapter, split as PiSSA does; W_res = W - W N N^T.

    The paper takes the top r singular triplets of W N N^T; it has rank <= r, and with W N = U S Q^T (d_out x r,
    a small SVD) they are U, S and V^T = Q^T N^T. A = sqrt(S / scaling) V^T, B = U sqrt(S / scaling), so that
    scaling B A = W N N^T (the paper's code has no scaling: PEFT's is divided out, as pissa_init does).
    """
    base = layer.get_base_layer()
    weight = transpose(base.weight, layer.fan_in_fan_out).to(torch.float64)
    r, scaling = layer.r[adapter_name], layer.scaling[adapter_name]
    basis = null_basis.to(weight.device, torch.float64)
    if basis.shape != (weight.shape[1], r):
        raise ValueError(f"null-space basis {tuple(basis.shape)} does not fit d_in={weight.shape[1]}, rank {r}")
    u, s, qh = torch.linalg.svd(weight @ basis, full_matrices=False)
    root = (s / scaling).sqrt()
    _set_adapter(layer, adapter_name, weight, a=root[:, None] * (qh @ basis.T), b=u * root)


def _set_adapter(layer: LoraLayer, adapter_name: str, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """Store A, B in the adapter's dtype and W - scaling B A (from the stored A, B) in the base layer's dtype."""
    if not isinstance(layer, LoraLinear):
        raise TypeError(f"{type(layer).__name__} layers are not supported; target Linear or Conv1D layers only")
    lora_a, lora_b = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
    lora_a.data = a.to(lora_a.dtype).contiguous()
    lora_b.data = b.to(lora_b.dtype).contiguous()
    base = layer.get_base_layer()
    b64, a64, scaling = lora_b.double(), lora_a.double(), layer.scaling[adapter_name]
    residual = torch.empty(weight.shape, dtype=base.weight.dtype, device=weight.device)
    for rows in _row_blocks(weight):
        residual[rows] = weight[rows].double() - scaling * (b64[rows] @ a64)
    base.weight.data = transpose(residual, layer.fan_in_fan_out).contiguous()


def _row_blocks(weight: torch.Tensor) -> list[slice]:
    """Slices of `ROW_BLOCK` rows: a wide layer's W is made float64 a block at a time, never as a whole copy."""
    return [slice(lo, lo + ROW_BLOCK) for lo in range(0, weight.shape[0], ROW_BLOCK)]


def _targets(model: nn.Module, config: LoraConfig, linear_only: bool) -> dict[str, nn.Module]:
    """The Linear/Conv1D layers the config targets; with `linear_only`, other targeted types are refused."""
    found = dict(target_modules(model, config))
    if not found:
        raise ValueError(f"target_modules {sorted(config.target_modules)} match no Linear or Conv1D layer of the model")
    for name, module in model.named_modules() if linear_only else ():
        if LoraModel._check_target_module_exists(config, name) and name not in found and not list(module.children()):
            raise ValueError(f"target module {name} is a {type(module).__name__}; only Linear and Conv1D are supported")
    return found


def _shape(module: nn.Module) -> tuple[int, int]:
    """(d_out, d_in); Conv1D stores its weight transposed."""
    d0, d1 = module.weight.shape
    return (d1, d0) if isinstance(module, Conv1D) else (d0, d1)


def _basis(subspace: Subspace | torch.Tensor) -> torch.Tensor:
    return subspace.basis if isinstance(subspace, Subspace) else subspace
