"""The methods the pipeline trains: one row per method, read by config validation, inits, training and benchmarks."""

from __future__ import annotations

from typing import Literal, NamedTuple


class Method(NamedTuple):
    name: str
    # "baseline": a published method the paper compares with; "control": not published (random_subspace: SC-LoRA's
    # construction on a random basis); "sclora": an SC-LoRA variant, run once per beta.
    kind: Literal["baseline", "control", "sclora"]
    init: str | None  # the sclora.inits method it starts from; None: no adapter, every weight trains
    needs_data: bool  # its init reads activations captured on D+ or D-
    residual: bool  # its init rewrites the base weights so that W_res + scaling * B A == W
    # Whose learning rate it trains at when train.learning_rates does not name it; None: train.lr.
    # A frozen basis trains what sclora trains, less B: sclora's rate.
    lr_from: str | None = None
    freeze_basis: bool = False  # B (the subspace) kept fixed through training


METHODS = (
    Method("lora", "baseline", "lora", needs_data=False, residual=False),
    Method("pissa", "baseline", "pissa", needs_data=False, residual=True),
    Method("milora", "baseline", "milora", needs_data=False, residual=True),
    Method("corda_ipm", "baseline", "corda_ipm", needs_data=True, residual=True),
    Method("corda_kpm", "baseline", "corda_kpm", needs_data=True, residual=True),
    Method("full", "baseline", None, needs_data=False, residual=False),
    Method("random_subspace", "control", "random_subspace", needs_data=False, residual=True),
    Method("sclora", "sclora", "sclora", needs_data=True, residual=True),
    Method("sclora_frozen", "sclora", "sclora", needs_data=True, residual=True, lr_from="sclora", freeze_basis=True),
)
BY_NAME = {method.name: method for method in METHODS}
NAMES = tuple(BY_NAME)
# The baselines run once per task and seed; the SC-LoRA variants once per task, seed and beta (`solve.betas`).
BASELINES = tuple(method.name for method in METHODS if method.kind != "sclora")
PAPER_BASELINES = [method.name for method in METHODS if method.kind == "baseline"]
SCLORA_VARIANTS = {method.name: method.freeze_basis for method in METHODS if method.kind == "sclora"}
# The initialisations of sclora.inits.init_lora: every adapter method's own (a variant starts from sclora's).
INITS = tuple(method.name for method in METHODS if method.init == method.name)
