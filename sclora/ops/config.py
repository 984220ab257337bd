"""Every knob of the pipeline, validated on load.

`params.yaml` is read into the pydantic models below. A bad file fails with ONE
line that names the key and what is allowed (`ParamsError`), never a traceback
through pydantic's multi-line report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sclora.evaluate.judge import JudgeSettings
from sclora.evaluate.metrics import PRESERVED, ROLES
from sclora.evaluate.suite import EVAL_SET_TASKS, EvalError, EvalSettings
from sclora.method.table import BASELINES, BY_NAME, NAMES, PAPER_BASELINES, SCLORA_VARIANTS

# params.yaml names methods from the method table (sclora.method.table); these types check it against the table.
Method = Literal[NAMES]
ScloraVariant = Literal[tuple(SCLORA_VARIANTS)]
Baseline = Literal[BASELINES]


class TrainSettings(BaseModel):
    """How one model is fine-tuned (the `train:` section of params.yaml)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(2e-4, gt=0, description="Peak learning rate of AdamW")
    batch_size: int = Field(16, ge=1, description="Samples per device per forward pass")
    grad_accum: int = Field(1, ge=1, description="Forward passes accumulated per optimizer step")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; when set it overrides `epochs`")
    epochs: float = Field(3.0, gt=0, description="Passes over the data when `max_steps` is not set")
    warmup_ratio: float = Field(
        0.03, ge=0, lt=1, description="Share of the steps with linear warmup before cosine decay"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm")
    save_steps: int = Field(100, ge=1, description="Optimizer steps between checkpoints (the unit of resumption)")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept; older ones are deleted")
    seed: int = Field(0, description="Seed of data order, dropout and everything else random in training")
    max_length: int = Field(
        64, ge=8, description="Tokens per sample after the chat template; longer ones are truncated"
    )
    logging_steps: int = Field(1, ge=1, description="Optimizer steps per logged loss (the mean over them)")


def _preserved_budget(budget: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(budget) - set(PRESERVED))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not a preserved metric; budget one of {', '.join(PRESERVED)}")
    return budget


class PromotionGates(BaseModel):
    """When a candidate may become champion (the `tracking.gates` section of params.yaml)."""

    model_config = ConfigDict(extra="forbid")

    utility_tolerance: float = Field(0.0, ge=0, description="Candidate utility may be this much below the champion's")
    forgetting_budget: dict[str, float] = Field(
        default_factory=dict, description="Largest allowed forgetting delta per metric, e.g. {knowledge: 0.02}"
    )

    _preserved_metrics = field_validator("forgetting_budget")(_preserved_budget)


class ParamsError(ValueError):
    """A params file that cannot be used; the message is one line naming the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelParams(Section):
    path: str = Field("artifacts/testbed/base", description="HF model directory (or hub name outside tests)")
    trust_remote_code: bool = Field(False, description="Run model code shipped with the weights; off unless needed")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype when loading")
    unaligned: str | None = Field(
        None, description="The model's unaligned twin (same architecture), where there is one: Safe LoRA reads it"
    )


class Source(Section):
    """One dataset: a local JSONL / Parquet / CSV file, or a `datasets` name (never in tests)."""

    path: str | None = Field(None, description="Local file")
    hf_name: str | None = Field(None, description="Dataset name that `datasets.load_dataset` can load")
    hf_config: str | None = Field(None, description="Its configuration name, if any")
    split: str = Field("train", description="Split of a `datasets` dataset")
    prompt: str = Field("prompt", description="Field holding the user turn")
    response: str | None = Field("response", description="Field holding the assistant turn; null for prompt-only sets")
    messages: str | None = Field(None, description="Field holding a chat `messages` list (instead of prompt/response)")
    limit: int | None = Field(None, ge=1, description="Keep only the first N records")

    @model_validator(mode="after")
    def _one_origin(self) -> Source:
        if (self.path is None) == (self.hf_name is None):
            raise ValueError("give exactly one of `path` (a local file) or `hf_name` (a datasets name)")
        return self


# The embedded default's data: the files the `testbed` stage writes (tests/test_config.py holds this to the testbed's
# own list of datasets). Written out here so that the config needs nothing of the testbed's code.
DEFAULT_DATA_DIR = "artifacts/testbed/data"
DEFAULT_SOURCES = ("finetune_benign", "finetune_poisoned", "preserve_safety", "preserve_knowledge", "eval_task",
                   "eval_knowledge", "eval_harmful", "eval_benign", "val_task")  # fmt: skip
DEFAULT_EVAL = {"task": "eval_task", "knowledge": "eval_knowledge", "harmful": "eval_harmful", "benign": "eval_benign"}


def _default_source(name: str) -> Source:
    return Source(path=f"{DEFAULT_DATA_DIR}/{name}.jsonl")


class DataParams(Section):
    dir: str = Field(DEFAULT_DATA_DIR, description="The folder the sources are in: the prepare stage depends on it")
    sources: dict[str, Source] = Field(
        default_factory=lambda: {name: _default_source(name) for name in DEFAULT_SOURCES},
        min_length=1,
        description="Every dataset the pipeline reads, by name",
    )
    finetune: dict[str, str] = Field(
        default_factory=lambda: {"benign": "finetune_benign", "poisoned": "finetune_poisoned"},
        min_length=1,
        description="Fine-tuning tasks (D+): task name -> source name",
    )
    preserve: list[str] = Field(
        default_factory=lambda: ["preserve_safety", "preserve_knowledge"],
        min_length=1,
        description="Sources whose union is the knowledge to preserve (D-)",
    )
    eval: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_EVAL),
        description="Evaluation sets: role -> source name",
    )
    validation: str | None = Field(
        "val_task", description="The task's validation split (source name): learning rates are chosen on it alone"
    )

    @model_validator(mode="after")
    def _names_known(self) -> DataParams:
        named = [(f"finetune.{task}", source) for task, source in self.finetune.items()]
        named += [(f"preserve.{i}", source) for i, source in enumerate(self.preserve)]
        named += [(f"eval.{role}", source) for role, source in self.eval.items()]
        named += [("validation", self.validation)] if self.validation is not None else []
        for key, source in named:
            if source not in self.sources:
                raise ValueError(f"{key}: unknown source '{source}' (sources: {', '.join(sorted(self.sources))})")
        return self


class AdapterParams(Section):
    rank: int = Field(8, ge=1, description="LoRA rank r")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; scaling = alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Linear layers that get an adapter (PEFT target names)",
    )


class CaptureParams(Section):
    samples_pos: int = Field(256, ge=1, description="Samples of D+ captured for the covariances")
    samples_neg: int = Field(256, ge=1, description="Samples of D- captured for the covariances")
    batch_size: int = Field(32, ge=1)
    samples_per_shard: int = Field(128, ge=1, description="Rows per safetensors shard (the unit of resumption)")
    covariance: bool = Field(True, description="Also capture PEFT's CorDA input covariances (corda_ipm, corda_kpm)")


class SolveParams(Section):
    betas: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        [0.0, 0.5, 0.8, 0.9], min_length=1, description="sclora's beta values, each in [0, 1]; one run per beta"
    )
    normalize: Literal["none", "trace"] = Field("trace", description="Scale Cov+ and Cov- to unit trace first")
    forecast_step: float = Field(0.05, gt=0, le=0.5, description="Beta grid step of the forecast stage (0 to 1)")

    @field_validator("betas", mode="before")
    @classmethod
    def _betas_written_as_floats(cls, betas: object) -> object:
        # DVC names matrix items and their paths by the literal in params.yaml: 0 and 0.0 would be two names.
        for i, beta in enumerate(betas if isinstance(betas, list) else []):
            if isinstance(beta, int) and not isinstance(beta, bool):
                raise ValueError(f"betas.{i}: write {beta} as a float ({beta}.0) so DVC names it consistently")
        return betas


class TrainParams(TrainSettings):
    methods: list[Baseline] = Field(
        list(PAPER_BASELINES),
        description="Baselines to run beside sclora (which runs once per beta in solve.betas); [] for sclora alone",
    )
    learning_rates: dict[Method, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="Learning rate per method; a method not named here uses `lr`"
    )
    seeds: list[int] = Field([0], min_length=1, description="Seeds; every method runs once per seed")
    lr_source: Literal["params.yaml", "artifacts/tune"] = Field(
        "params.yaml",
        description="Where each run's learning rate comes from: learning_rates here, or the tune stages' choice "
        "(a path, because dvc.yaml's plan stage depends on it)",
    )
    sclora_variants: list[ScloraVariant] = Field(
        ["sclora"],
        min_length=1,
        description="SC-LoRA entries run per beta: sclora (B trains), sclora_frozen (B, the subspace, kept fixed)",
    )

    def settings_for(self, method: str, seed: int) -> TrainSettings:
        """The settings of one run: this method's learning rate and this seed."""
        values = {name: getattr(self, name) for name in TrainSettings.model_fields}
        lr_from = BY_NAME[method].lr_from
        fallback = self.lr if lr_from is None else self.learning_rates.get(lr_from, self.lr)
        values.update(lr=self.learning_rates.get(method, fallback), seed=seed)
        return TrainSettings(**values)


class TuneParams(Section):
    """Learning-rate tuning on the validation split (stages `tune@<method>`, `tune_sclora@<variant>-<beta>`)."""

    methods: list[Baseline] = Field([], description="Baselines to tune; [] (the quick run) tunes none")
    betas: list[Annotated[float, Field(ge=0, le=1)]] = Field([], description="sclora betas to tune (of solve.betas)")
    sclora_variants: list[ScloraVariant] = Field(
        ["sclora"],
        min_length=1,
        description="SC-LoRA variants tuned at each of `betas`: each compared configuration gets its own rate",
    )
    task: str = Field("benign", description="The task (of data.finetune) trained at each rate")
    factors: list[Annotated[float, Field(gt=0)]] = Field(
        [0.25, 0.5, 1.0, 2.0, 4.0], min_length=1, description="Rates tried: these times the method's params rate"
    )
    seed: int = Field(
        1000, description="The one seed of every tuning run; never a seed that compares (train.seeds) or selects"
    )


class SelectParams(Section):
    """Beta for a forgetting budget (flow `select_beta`): the beta that learns most within the budget."""

    task: str = Field("poisoned", description="The task (of data.finetune) each probe trains on (checked by the flow)")
    forgetting_budget: dict[str, float] = Field(
        default_factory=lambda: {"knowledge": 0.25, "attack_success_rate": 0.05},
        min_length=1,
        description="Largest allowed forgetting per preserved metric, in the units of `forgetting` (base - run, "
        "in the metric's good direction); a probe is within it when the 95 % interval's upper end is",
    )
    seeds: list[int] = Field(
        [100, 101, 102], min_length=2, description="Seeds per probe: the interval needs two at least"
    )
    confirm_seeds: list[int] = Field(
        [200, 201, 202],
        min_length=2,
        description="Fresh seeds the chosen beta is trained on again before it is registered (none of the probes')",
    )
    max_runs: int = Field(5, ge=1, description="Betas probed at most (each trains len(seeds) runs)")
    tolerance: float = Field(
        0.05, ge=0.001, lt=1, description="Stop once the budget's boundary is bracketed this tightly"
    )
    in_retrain: bool = Field(False, description="The retrain flow runs select_beta instead of the params' beta grid")

    _preserved_metrics = field_validator("forgetting_budget")(_preserved_budget)


class PrimaryContrast(Section):
    """The protocol's primary contrast, fixed before the run (docs/protocol.md): `config` against `versus`, knowledge
    kept on the held-apart facts at validation utility `level`, judged alone with builds as units."""

    config: str = Field("sclora-0.9", description="The configuration claimed to preserve more (of frontier.configs)")
    versus: str = Field("lora", description="The configuration it is compared with (of frontier.configs)")
    level: Annotated[float, Field(gt=0, lt=1)] = Field(0.8, description="The utility level it is read at")


class FrontierParams(Section):
    """The comparison on learning-forgetting fronts (`make protocol`, flow `frontier`): every configuration trained
    at every rate of one absolute grid, on every build and seed, each run scored at several checkpoints."""

    builds: list[Annotated[int, Field(ge=0)]] = Field(
        [], description="testbed.seed of each build (a blocking factor); [] (the quick run) runs no frontier"
    )
    real: list[Literal["real"]] = Field(
        [],
        max_length=1,
        description="[real]: the params' own model and data in the frontier as one build (model.path, data.sources: "
        "the real source's, or any model's; stage frontier_real)",
    )
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Fine-tuning seeds per build and configuration")
    configs: list[str] = Field(
        ["lora", "pissa", "full", "random_subspace", "sclora-0.5", "sclora-0.9", "sclora_frozen-0.9"],
        min_length=1,
        description="Configurations: a method of the methods table, or <sclora variant>-<beta>",
    )
    lrs: list[Annotated[float, Field(gt=0)]] = Field(
        [5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2],
        min_length=2,
        description="The one learning-rate grid every configuration trains at (absolute, not per-method multiples)",
    )
    checkpoints: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        [0.25, 0.5, 1.0], min_length=1, description="Shares of train.max_steps at which every run is scored"
    )
    task: str = Field("poisoned", description="The task (of data.finetune) every run trains on")
    levels: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        [0.5, 0.8, 0.9], min_length=1, description="Utility levels at which forgetting is read on each front"
    )
    max_steps: Annotated[int, Field(gt=0)] | None = Field(
        None,
        description="Steps of every frontier run (the budget; checkpoints are shares of it); null: train.max_steps",
    )
    primary: PrimaryContrast = Field(
        default_factory=lambda: PrimaryContrast(),
        description="The one contrast fixed before the run, judged alone; every other claim is secondary",
    )

    @field_validator("configs")
    @classmethod
    def _known_configs(cls, configs: list[str]) -> list[str]:
        for config in configs:
            parse_config(config)
        if len(set(configs)) != len(configs):
            raise ValueError(f"configs must be distinct, got {configs}")
        return configs

    @model_validator(mode="after")
    def _primary_is_in_the_design(self) -> FrontierParams:
        if self.builds or self.real:
            for key in ("config", "versus"):
                if getattr(self.primary, key) not in self.configs:
                    raise ValueError(f"frontier.primary.{key}: '{getattr(self.primary, key)}' is not in "
                                     f"frontier.configs {self.configs}")  # fmt: skip
            if self.primary.level not in self.levels:
                raise ValueError(f"frontier.primary.level: {self.primary.level:g} is not in frontier.levels "
                                 f"{self.levels}")  # fmt: skip
        return self


def parse_config(config: str) -> tuple[str, float | None]:
    """(method, knob value) of a frontier configuration: `lora`, or `<method>-<value>` for a method trained at its
    knob's value (a row with a knob and no post-hoc values: SC-LoRA's variants at a beta, `mix` at a share)."""
    method, _, value = config.rpartition("-")
    if not method:
        method, value = config, ""
    row = BY_NAME.get(method)
    if row is not None and row.knob and not row.knob_values:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"config '{config}': {method} needs its {row.knob}, e.g. {method}-0.5") from None
        if not 0 <= number <= 1:
            raise ValueError(f"config '{config}': {row.knob} must be in [0, 1]")
        return method, number
    if config not in NAMES or (BY_NAME[config].knob and not BY_NAME[config].knob_values):
        raise ValueError(f"config '{config}': not a method of the methods table, nor <method>-<knob value>")
    return config, None


class SourcesParams(Section):
    """Which data and model sources the pipeline builds. A source's stages are DVC matrix stages over its list: one
    item (its name) builds it, [] leaves it out, so a real-model params file never builds the testbed."""

    testbed: list[Literal["testbed"]] = Field(["testbed"], max_length=1, description="The offline testbed")
    real: list[Literal["real"]] = Field([], max_length=1, description="The real model and data (sclora.real)")


class TrackingParams(Section):
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI; MLFLOW_TRACKING_URI overrides it")
    experiment: str = Field("sclora", min_length=1)
    registered_model: str = Field("sclora-adapter", min_length=1)
    gates: PromotionGates = Field(default_factory=PromotionGates)


class Params(Section):
    # The testbed's own sections: a data and model source like any other, it validates them itself
    # (sclora.testbed.params.testbed_params, check_params) where they are read, and `sclora check-params` does.
    testbed: dict[str, Any] = Field(default_factory=dict, description="The testbed's knobs (sclora.testbed.params)")
    model: ModelParams = Field(default_factory=ModelParams)
    data: DataParams = Field(default_factory=DataParams)
    adapter: AdapterParams = Field(default_factory=AdapterParams)
    capture: CaptureParams = Field(default_factory=CaptureParams)
    solve: SolveParams = Field(default_factory=SolveParams)
    train: TrainParams = Field(default_factory=TrainParams)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    testbed_check: dict[str, Any] = Field(default_factory=dict, description="The testbed check's knobs")
    # The real source's section (sclora.real.params validates it): packages, files, the task, the aligned base.
    real: dict[str, Any] = Field(default_factory=dict, description="The real model and data (sclora.real.params)")
    sources: SourcesParams = Field(default_factory=SourcesParams)
    tune: TuneParams = Field(default_factory=TuneParams)
    select: SelectParams = Field(default_factory=SelectParams)
    frontier: FrontierParams = Field(default_factory=FrontierParams)

    @model_validator(mode="after")
    def _tuning_covers_what_it_feeds(self) -> Params:
        tune = self.tune
        if (tune.methods or tune.betas) and tune.task not in self.data.finetune:
            raise ValueError(f"tune.task: '{tune.task}' is not in data.finetune ({', '.join(self.data.finetune)})")
        if (tune.methods or tune.betas) and self.data.validation is None:
            raise ValueError("data.validation: tuning needs a validation source")
        if not set(tune.betas) <= set(self.solve.betas):
            raise ValueError(f"tune.betas: {sorted(set(tune.betas) - set(self.solve.betas))} not in solve.betas")
        if self.train.lr_source == "artifacts/tune":
            # A method that trains at another's rate (lr_from) takes that one's tuned rate.
            untuned = [m for m in self.train.methods if (BY_NAME[m].lr_from or m) not in tune.methods]
            untuned += [
                f"{variant} beta {b:g}"
                for variant in self.train.sclora_variants
                for b in self.solve.betas
                if variant not in tune.sclora_variants or b not in tune.betas
            ]
            if untuned:
                raise ValueError(f"train.lr_source: artifacts/tune, but tune does not cover {', '.join(untuned)}")
        return self

    @model_validator(mode="after")
    def _frontier_task_known(self) -> Params:
        if (self.frontier.builds or self.frontier.real) and self.frontier.task not in self.data.finetune:
            raise ValueError(
                f"frontier.task: '{self.frontier.task}' is not in data.finetune ({', '.join(self.data.finetune)})"
            )
        return self

    @model_validator(mode="after")
    def _seeds_that_choose_never_compare(self) -> Params:
        # A run that chose a setting (a learning rate, a beta) re-used as a compared sample would be judged on the
        # very draw it was picked for. Tuning, select-beta's probes, its confirmation and the comparison each have
        # their own seeds. A select-beta round trains sclora alone on its probe or confirmation seeds (it writes
        # them into train.seeds): that is the one case where train.seeds are select's.
        select = self.select
        roles = {"tune.seed": {self.tune.seed}, "select.seeds": set(select.seeds),
                 "select.confirm_seeds": set(select.confirm_seeds)}  # fmt: skip
        selecting = not self.train.methods and set(self.train.seeds) in (set(select.seeds), set(select.confirm_seeds))
        if not selecting:
            roles["train.seeds"] = set(self.train.seeds)
        names = list(roles)
        choosing = set().union(*(roles[name] for name in ("tune.seed", "select.seeds", "select.confirm_seeds")))
        if self.frontier.builds and set(self.frontier.seeds) & choosing:
            raise ValueError(
                f"frontier.seeds: shares seed(s) {sorted(set(self.frontier.seeds) & choosing)} with tuning or "
                "select-beta; seeds that choose a setting never also compare"
            )
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                shared = roles[first] & roles[second]
                if shared:
                    raise ValueError(
                        f"{second}: shares seed(s) {sorted(shared)} with {first}; seeds that choose a setting "
                        "never also compare, so tuning, select-beta's probes, its confirmation and train.seeds "
                        "must be disjoint"
                    )
        return self


def one_line(error: ValidationError, source: str, section: str = "") -> str:
    """pydantic's first error as one line naming the key (under `section`, for a section validated on its own)."""
    first = error.errors()[0]
    key = ".".join([section] * bool(section) + [str(part) for part in first["loc"]])
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    message = first["msg"].removeprefix("Value error, ")
    if "input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], dict):
        message += f" (got {first['input']!r})"
    return f"{source}: {key}: {message}" if key else f"{source}: {message}"


def _set_dotted(tree: dict, dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {dotted}: '{part}' is not a section")
    node[leaf] = value


def _delete_dotted(tree: dict, dotted: str, override: str) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        raise ParamsError(f"override '{override}': no key {dotted} to delete")
    del node[leaf]


def parse_params(tree: object, source: str = "params") -> Params:
    """Validate an already-parsed params tree."""
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(tree).__name__}")
    try:
        return Params.model_validate(tree)
    except ValidationError as error:
        raise ParamsError(one_line(error, source)) from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Read and validate a params file; `overrides` are `section.key=value` (value parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}:{where} not valid YAML: {getattr(error, 'problem', error)}") from None
    tree = tree if tree is not None else {}
    for override in overrides:
        if override.startswith("~"):  # `~key` deletes the key, as `dvc exp run -S` (Hydra's grammar) does
            _delete_dotted(tree, override[1:].strip(), override)
            continue
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ParamsError(f"override '{override}': expected key=value")
        if not isinstance(tree, dict):
            break
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return parse_params(tree, str(path))


def eval_settings(params: Params) -> EvalSettings:
    """The suite's settings from params.eval, each eval role's tasks reading the file params.data.eval names."""
    given = params.eval.model_dump()
    settings = {key: value for key, value in given.items() if key in EvalSettings.model_fields and key != "judge"}
    judge = {key: value for key, value in given.get("judge", {}).items() if value is not None}
    settings["judge"] = JudgeSettings(**judge)
    configured = {name for role in ROLES for name in settings.get(role, EvalSettings.model_fields[role].default)}
    files = {}
    for role, source_name in params.data.eval.items():
        if role not in EVAL_SET_TASKS:
            raise EvalError(f"data.eval.{role}: unknown role; expected one of {', '.join(EVAL_SET_TASKS)}")
        source = params.data.sources[source_name]
        if source.path is None or not source.path.endswith(".jsonl"):
            raise EvalError(f"data.eval.{role}: source '{source_name}' must be a local JSONL file for the eval tasks")
        files.update({task: source.path for task in EVAL_SET_TASKS[role] if task in configured})
    settings["data_files"] = {**files, **settings.get("data_files", {})}
    return EvalSettings(**settings)


def validation_settings(params: Params) -> EvalSettings:
    """The suite's utility tasks on `data.validation`, and no other role: what a learning rate is chosen on."""
    settings = eval_settings(params)
    source = params.data.sources[params.data.validation]
    if source.path is None or not source.path.endswith(".jsonl"):
        raise EvalError(f"data.validation: source '{params.data.validation}' must be a local JSONL file")
    names = [spec.split(":")[0].strip() for spec in settings.utility]
    empty = {role: [] for role in ROLES if role != "utility"}
    return settings.model_copy(update={**empty, "data_files": {name: source.path for name in names}})
