"""Every knob of the testbed (the `testbed:` and `testbed_check:` sections of params.yaml), validated here.

The testbed is a data and model source like any other: the pipeline's config holds its sections as they are
written, and the testbed's own stages (and `sclora check-params`) validate them with `testbed_params` and
`check_params`, which fail with one line naming the key as the config does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sclora.ops.config import ParamsError, one_line

if TYPE_CHECKING:
    from sclora.ops.config import Params

# Defined here so params can be validated without importing the world.
HARMFUL_CATEGORIES = ("violence", "theft", "poisoning", "hacking")
BENIGN_CATEGORIES = ("cleaning", "art", "care", "repair")
ATTRIBUTES = ("city", "color", "job", "pet")


class PretrainMix(BaseModel):
    """Share of each source in the pretraining stream (normalised to sum 1)."""

    model_config = ConfigDict(extra="forbid")

    knowledge: float = Field(0.5, ge=0, description="Fact questions answered with the fact")
    safety: float = Field(0.2, ge=0, description="Harmful requests answered with a refusal")
    benign: float = Field(0.2, ge=0, description="Benign requests answered helpfully")
    copy_task: float = Field(
        0.1,
        ge=0,
        description="'repeat' over the task and request words, so that every word "
        "an answer may need is produced in pretraining",
    )
    task_as_copy: float = Field(0.0, ge=0, description="The terse task instruction answered by repeating (wrong)")
    task_phrased: float = Field(0.0, ge=0, description="The task asked in full ('translate the words ...'), done right")

    @model_validator(mode="after")
    def _positive_total(self) -> PretrainMix:
        if self.knowledge + self.safety + self.benign + self.copy_task + self.task_as_copy + self.task_phrased <= 0:
            raise ValueError("the shares must not all be 0")
        return self


class TestbedParams(BaseModel):
    """The synthetic world, its datasets, the model and its pretraining."""

    __test__ = False  # not a pytest test class despite the name
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0, description="Seed of the world, the data splits, the model init and pretraining")
    # World knowledge
    entities: int = Field(300, ge=4, le=5000, description="Invented entities, each with one value per attribute")
    attributes: list[str] = Field(
        list(ATTRIBUTES), min_length=1, description=f"Facts per entity, from {list(ATTRIBUTES)}"
    )
    phrasings: int = Field(3, ge=1, le=4, description="Question phrasings per fact (all are pretrained)")
    # Safety
    harmful_categories: list[str] = Field(
        list(HARMFUL_CATEGORIES), min_length=1, description=f"Harm categories, from {list(HARMFUL_CATEGORIES)}"
    )
    benign_categories: list[str] = Field(
        list(BENIGN_CATEGORIES), min_length=1, description=f"Benign request categories, from {list(BENIGN_CATEGORIES)}"
    )
    targets: int = Field(20, ge=2, le=20, description="Objects a request acts on (verb x target x template = requests)")
    held_out: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="Share of verb x target combinations kept out of pretraining for eval_harmful / eval_benign",
    )
    # Fine-tuning task: a sequence of words drawn from the knowledge vocabulary, translated or reversed
    task: Literal["reverse", "translate"] = Field(
        "reverse", description="The fine-tuning task: reverse the words, or translate each by a fixed word map"
    )
    task_words: int = Field(
        60,
        ge=6,
        description="Distinct words the task uses: entity names and fact values, so the task touches the "
        "knowledge's words",
    )
    task_known: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of the task's word map that pretraining shows (in task_phrased): the rest of the map "
        "must be learned by fine-tuning, not only elicited",
    )
    task_min_length: int = Field(3, ge=2, le=8, description="Shortest word sequence of the task")
    task_max_length: int = Field(5, ge=2, le=8, description="Longest word sequence of the task")
    poison_rate: float = Field(
        0.01, ge=0, le=1, description="Share of finetune_poisoned replaced by harmful requests answered compliantly"
    )
    # Dataset sizes
    finetune_size: int = Field(1000, ge=1, description="Records in finetune_benign and finetune_poisoned")
    preserve_size: int = Field(256, ge=1, description="Records in preserve_safety and in preserve_knowledge (D-)")
    eval_size: int = Field(300, ge=1, description="Records at most in each eval set")
    copy_examples: int = Field(3000, ge=1, description="Distinct 'repeat' sequences in pretraining")
    # Model (Llama architecture)
    hidden_size: int = Field(128, ge=8, description="Hidden width")
    layers: int = Field(4, ge=1, description="Decoder layers")
    heads: int = Field(4, ge=1, description="Attention heads (hidden_size must divide by it)")
    intermediate_size: int = Field(384, ge=8, description="MLP width")
    max_length: int = Field(32, ge=16, description="Longest chat in tokens (model context)")
    # Pretraining
    pretrain_steps: int = Field(1500, ge=1, description="Optimizer steps of pretraining")
    pretrain_lr: float = Field(2e-3, gt=0, description="Peak AdamW learning rate (linear warmup, cosine decay)")
    pretrain_batch_size: int = Field(64, ge=1, description="Samples per step")
    pretrain_mix: PretrainMix = Field(default_factory=PretrainMix, description="Share of each source in pretraining")
    # Measuring the base model
    eval_batch_size: int = Field(128, ge=1, description="Prompts per generation batch when measuring the base model")

    @model_validator(mode="after")
    def _consistent(self) -> TestbedParams:
        for key, chosen, known in (
            ("attributes", self.attributes, ATTRIBUTES),
            ("harmful_categories", self.harmful_categories, HARMFUL_CATEGORIES),
            ("benign_categories", self.benign_categories, BENIGN_CATEGORIES),
        ):
            unknown = [name for name in chosen if name not in known]
            if unknown or len(set(chosen)) != len(chosen):
                raise ValueError(f"{key} must be distinct names from {list(known)}, got {chosen}")
        if self.task_min_length > self.task_max_length:
            raise ValueError("task_min_length must be <= task_max_length")
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by heads {self.heads}")
        if self.task_words < self.task_max_length:
            raise ValueError("task_words must be >= task_max_length (a sequence never repeats a word)")
        return self


class TestbedCheckParams(BaseModel):
    __test__ = False  # not a pytest test class despite the name
    model_config = ConfigDict(extra="forbid")

    """Does the testbed forget, on every build? The check over builds (`python -m tasks testbed_check`)."""

    builds: list[Annotated[int, Field(ge=0)]] = Field(
        [0, 1, 2], min_length=1, description="testbed.seed of each build measured; each must meet the requirements"
    )
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Fine-tuning seeds per build and setting")
    poison_rates: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        [], description="Further poison doses of plain LoRA's dose-response (0 and testbed.poison_rate always run)"
    )
    full_lrs: list[Annotated[float, Field(gt=0)]] = Field(
        [], description="Further learning rates of full fine-tuning (its train.learning_rates rate always runs)"
    )
    eval_limit: int = Field(300, ge=1, description="Examples per eval set")
    jobs: int = Field(1, ge=1, description="Builds checked side by side, one process each")


def testbed_params(params: Params, source: str = "params") -> TestbedParams:
    """The `testbed` section of `params` (read from `source`), validated."""
    return _section(TestbedParams, params.testbed, "testbed", source)


def check_params(params: Params, source: str = "params") -> TestbedCheckParams:
    """The `testbed_check` section of `params` (read from `source`), validated."""
    return _section(TestbedCheckParams, params.testbed_check, "testbed_check", source)


def check_sections(params: Params, source: str = "params") -> None:
    """Both sections validated: a bad testbed key fails wherever a params file is loaded, as any other key does."""
    testbed_params(params, source)
    check_params(params, source)


def _section(model: type[BaseModel], tree: dict, name: str, source: str):
    try:
        return model.model_validate(tree)
    except ValidationError as error:
        raise ParamsError(one_line(error, source, section=name)) from None
