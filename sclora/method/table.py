"""The methods the pipeline trains: one row per method, everything the pipeline needs to know about it.

Config validation, training, planning, export, registration and the docs read these rows; only the row and its
apply function (`sclora.method.inits.apply_method`, which decides once which scheme runs, as PEFT's `update_layer`
does) know a method by its name. Adding a method is its row, its branch in `apply_method` and a docs line
(docs/pipeline.md's methods table); tests/test_methods.py fails if a method name is dispatched anywhere else.
This module imports nothing heavy: the config and the registry read it in processes that never load torch.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

# What a method does to the model. lora_init: a LoRA adapter with an initialisation scheme; tuner: another PEFT
# tuner (not LoRA); post_hoc: a LoRA adapter, trained, then changed by a step after training; full: no adapter.
Kind = Literal["lora_init", "tuner", "post_hoc", "full"]
# What its init (or its post-hoc step) reads from the pipeline: a capture's input covariances (pos: D+, the task; neg:
# D-, the preserved sets), SC-LoRA's solved subspaces (stage solve), the task's own training batches (EVA, LoRA-GA,
# Astra), or the aligned-minus-unaligned weights of an aligned model and its unaligned twin (Safe LoRA).
Reads = Literal["pos_covariance", "neg_covariance", "subspaces", "task_batches", "alignment"]
# How the trained method is exported. lora: the adapter as it is, a plain LoRA (its base weights untouched);
# lora_2r: a residual init converted by PEFT to a plain LoRA of rank 2r on the original base; full_model: the
# trained model; osf: PEFT's OSF adapter itself (no conversion to LoRA in PEFT, so not a plain LoRA).
Export = Literal["lora", "lora_2r", "full_model", "osf"]


class Method(NamedTuple):
    name: str
    # "baseline": a method the paper compares with; "alternative": a published method a user would pick instead
    # to forget less or learn faster (not in the paper's tables); "control": not published (random_subspace:
    # SC-LoRA's construction on a random basis); "sclora": an SC-LoRA variant, run once per beta.
    role: Literal["baseline", "alternative", "control", "sclora"]
    kind: Kind
    # The sclora.method.inits scheme its adapter starts from (its own name, or the one it varies); None: none.
    init: str | None
    # PEFT's `init_lora_weights` for its init; False: PEFT creates A and B and leaves the base weight alone, and
    # sclora.method.inits writes all three. None: no LoRA adapter.
    peft_init: bool | str | None
    reads: Reads | None  # what its init reads (above); None: nothing but the model
    residual: bool  # its init rewrites the base weights so that W_res + scaling * B A == W
    export: Export
    reference: str  # where the method is defined (docs/pipeline.md's methods table shows it)
    # Its trade-off knob and the values a run evaluates: one trained run, one point of the curve per value.
    # sclora's knob is beta, swept as solve.betas (one run per beta), so it has no values here.
    knob: str | None = None
    knob_values: tuple[float, ...] = ()
    knob_default: float | None = None  # the value whose point is the run's own metrics.json
    # Whose learning rate it trains at when train.learning_rates does not name it; None: train.lr.
    # A frozen basis trains what sclora trains, less B: sclora's rate. A post-hoc step trains as its adapter does.
    lr_from: str | None = None
    freeze_basis: bool = False  # B (the subspace) kept fixed through training
    # Trains on the task with this share of its records replaced by preserved data (D-, data.preserve: disjoint from
    # every eval set); None: on the task alone. A method whose knob is `share` takes it from the knob instead.
    mix_share: float | None = None


_PEFT = "PEFT 0.22.0"
# One method a row, its fields by name (formatting off: ruff would spread each row over a dozen lines).
# fmt: off
METHODS = (
    Method("lora", "baseline", "lora_init", init="lora", peft_init=True,
           reads=None, residual=False, export="lora",
           reference="Hu et al. 2021, arXiv 2106.09685; " + _PEFT),
    Method("pissa", "baseline", "lora_init", init="pissa", peft_init="pissa",
           reads=None, residual=True, export="lora_2r",
           reference="arXiv 2404.02948; " + _PEFT),
    Method("milora", "baseline", "lora_init", init="milora", peft_init=False,
           reads=None, residual=True, export="lora_2r",
           reference="arXiv 2406.09044 (sclora.method.inits)"),
    Method("corda_ipm", "baseline", "lora_init", init="corda_ipm", peft_init="corda",
           reads="pos_covariance", residual=True, export="lora_2r",
           reference="arXiv 2406.05223; " + _PEFT),
    Method("corda_kpm", "baseline", "lora_init", init="corda_kpm", peft_init="corda",
           reads="neg_covariance", residual=True, export="lora_2r",
           reference="arXiv 2406.05223; " + _PEFT),
    Method("full", "baseline", "full", init=None, peft_init=None,
           reads=None, residual=False, export="full_model",
           reference="full fine-tuning"),
    Method("mica", "alternative", "lora_init", init="mica", peft_init="mica",
           reads=None, residual=False, export="lora",
           reference="arXiv 2604.01694; " + _PEFT),
    Method("olora", "alternative", "lora_init", init="olora", peft_init="olora",
           reads=None, residual=True, export="lora_2r",
           reference="arXiv 2406.01775; " + _PEFT),
    Method("orthogonal", "alternative", "lora_init", init="orthogonal", peft_init="orthogonal",
           reads=None, residual=False, export="lora",
           reference="datta0.github.io/posts/rethink-lora-init; " + _PEFT),
    Method("eva", "alternative", "lora_init", init="eva", peft_init="eva",
           reads="task_batches", residual=False, export="lora",
           reference="arXiv 2410.07170; " + _PEFT),
    Method("lora_ga", "alternative", "lora_init", init="lora_ga", peft_init="lora_ga",
           reads="task_batches", residual=True, export="lora_2r",
           reference="arXiv 2407.05000; " + _PEFT),
    Method("nora", "alternative", "lora_init", init="nora", peft_init="nora",
           reads=None, residual=False, export="lora",
           reference="PEFT 0.22's NoRA (column-normalised random A, B = 0); " + _PEFT),
    # SC-LoRA's parameterisation at beta = 0 (no preserve term), PEFT's covariance convention (per token, each forward
    # pass scaled by its largest output): tests/test_astra.py states the difference.
    Method("astra", "alternative", "lora_init", init="astra", peft_init="astra",
           reads="task_batches", residual=True, export="lora_2r",
           reference="arXiv 2602.19111; " + _PEFT),
    Method("lora_null", "alternative", "lora_init", init="lora_null", peft_init=False,
           reads="neg_covariance", residual=True, export="lora_2r",
           reference="arXiv 2503.02659 (sclora.method.lora_null)"),
    Method("osf", "alternative", "tuner", init=None, peft_init=None,
           reads=None, residual=False, export="osf",
           reference="PEFT's OSF tuner (peft.tuners.osf); " + _PEFT),
    Method("lora_intruder", "alternative", "post_hoc", init="lora", peft_init=True,
           reads=None, residual=False, export="lora",
           reference="arXiv 2410.21228; PEFT's reduce_intruder_dimension",
           knob="mitigation_lambda", knob_values=(0.0, 0.25, 0.5, 0.75, 1.0), knob_default=0.75, lr_from="lora"),
    # WiSE-FT on the adapter: theta_0 + alpha (theta_ft - theta_0), the trained delta s B A scaled by alpha.
    Method("wise", "alternative", "post_hoc", init="lora", peft_init=True,
           reads=None, residual=False, export="lora",
           reference="WiSE-FT, arXiv 2109.01903, on LoRA's delta (sclora.method.inits)",
           knob="alpha", knob_values=(0.25, 0.5, 0.75, 1.0), knob_default=0.5, lr_from="lora"),
    # Safe LoRA: a layer's trained delta projected onto the aligned-minus-unaligned direction where it is far from it.
    Method("safe_lora", "alternative", "post_hoc", init="lora", peft_init=True,
           reads="alignment", residual=False, export="lora",
           reference="arXiv 2405.16833 (sclora.method.inits; PEFT pull request 2201 is open)",
           knob="threshold", knob_values=(0.3, 0.5, 0.7), knob_default=0.5, lr_from="lora"),
    # Data mixing: what practitioners are told first. LoRA on the task with a share of D- mixed in.
    Method("mix", "alternative", "lora_init", init="lora", peft_init=True,
           reads=None, residual=False, export="lora",
           reference="data mixing (LLaMA-Factory's answer to forgetting); D- as the mixed data",
           knob="share", lr_from="lora", mix_share=0.25),
    Method("random_subspace", "control", "lora_init", init="random_subspace", peft_init=False,
           reads=None, residual=True, export="lora_2r",
           reference="SC-LoRA on a random basis"),
    Method("sclora", "sclora", "lora_init", init="sclora", peft_init=False,
           reads="subspaces", residual=True, export="lora_2r",
           reference="arXiv 2505.23724",
           knob="beta"),
    Method("sclora_frozen", "sclora", "lora_init", init="sclora", peft_init=False,
           reads="subspaces", residual=True, export="lora_2r",
           reference="arXiv 2505.23724, B kept fixed",
           knob="beta", lr_from="sclora", freeze_basis=True),
    Method("sclora_mix", "sclora", "lora_init", init="sclora", peft_init=False,
           reads="subspaces", residual=True, export="lora_2r",
           reference="arXiv 2505.23724, with data mixing (a quarter of the task's records D-)",
           knob="beta", lr_from="sclora", mix_share=0.25),
)
# fmt: on
BY_NAME = {method.name: method for method in METHODS}
NAMES = tuple(BY_NAME)
# The baselines run once per task and seed; the SC-LoRA variants once per task, seed and beta (`solve.betas`).
BASELINES = tuple(method.name for method in METHODS if method.role != "sclora")
PAPER_BASELINES = [method.name for method in METHODS if method.role == "baseline"]
SCLORA_VARIANTS = {method.name: method.freeze_basis for method in METHODS if method.role == "sclora"}
# The initialisations of sclora.method.inits.init_lora: every adapter method's own (a variant starts from sclora's, a
# post-hoc step from the adapter it changes).
INITS = tuple(method.name for method in METHODS if method.init == method.name)


def has_adapter(name: str) -> bool:
    """True when the method trains an adapter (every kind but full fine-tuning)."""
    return BY_NAME[name].kind != "full"
