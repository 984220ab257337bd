"""What a method's init reads (its row's `reads`), and where each input comes from: one table, three sources.

    reads             argument             what it is
    pos_covariance    pos                  the task's (D+) captured layer inputs, with covariances (CorDA IPM)
    neg_covariance    neg                  the preserved data's (D-) captured layer inputs (CorDA KPM, LoRA-Null)
    subspaces         subspaces            SC-LoRA's solved subspaces at the run's beta
    task_batches      task_batches         the task's first training batches, as the Trainer collates them (EVA,
                                           LoRA-GA, Astra)
    alignment         alignment            W_aligned - W_unaligned per target layer: an aligned model and its
                                           unaligned twin (Safe LoRA's post-hoc step, not an init)

A source is anything with the five methods of `Inputs`: `Stored` reads what the pipeline's capture and solve stages
wrote, `Computed` computes the same in process from records (the capture stage's sample, the solve stage's math),
`Given` hands back what the caller computed itself (the benchmarks time each part apart).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sclora.method.table import BY_NAME

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from sclora.method.gather import CaptureStats
    from sclora.method.subspace import Subspace

SAMPLE_SEED = 0  # one fixed sample of each dataset, shared by every training seed (the capture stage's too)


class Inputs(Protocol):
    def pos(self) -> CaptureStats: ...
    def neg(self) -> CaptureStats: ...
    def subspaces(self, beta: float) -> Mapping[str, Subspace]: ...
    def task_batches(self) -> list[dict]: ...
    def alignment(self) -> Mapping[str, torch.Tensor]: ...


# A row's `reads` -> (the argument it fills, how a source gives it, whether the init or the post-hoc step reads it).
READS: dict[str, tuple[str, Callable[[Inputs, float | None], object], str]] = {
    "pos_covariance": ("pos", lambda inputs, beta: inputs.pos(), "init"),
    "neg_covariance": ("neg", lambda inputs, beta: inputs.neg(), "init"),
    "subspaces": ("subspaces", lambda inputs, beta: inputs.subspaces(beta), "init"),
    "task_batches": ("task_batches", lambda inputs, beta: inputs.task_batches(), "init"),
    "alignment": ("alignment", lambda inputs, beta: inputs.alignment(), "post_hoc"),
}


def init_arguments(method: str, beta: float | None, inputs: Inputs | None) -> dict:
    """The keyword arguments of `apply_method` that `method`'s row reads, from `inputs`."""
    return _arguments(method, beta, inputs, "init")


def post_hoc_arguments(method: str, inputs: Inputs | None) -> dict:
    """The keyword arguments of `post_hoc_step` that `method`'s row reads, from `inputs`."""
    return _arguments(method, None, inputs, "post_hoc")


def _arguments(method: str, beta: float | None, inputs: Inputs | None, reader: str) -> dict:
    reads = BY_NAME[method].reads
    if reads is None or READS[reads][2] != reader:
        return {}
    if inputs is None:
        raise ValueError(f"method {method!r} reads {reads}: give it inputs")
    argument, get, _ = READS[reads]
    return {argument: get(inputs, beta)}


def sample(records: Sequence[dict], count: int) -> list[dict]:
    """The first `count` of `records` after a shuffle seeded SAMPLE_SEED: the sample a capture takes."""
    rows = list(records)
    random.Random(SAMPLE_SEED).shuffle(rows)
    return rows[:count]


@dataclass
class CaptureKnobs:
    """How D+ and D- are sampled and captured (params' `capture` section, and train.max_length)."""

    samples_pos: int
    samples_neg: int
    batch_size: int
    covariance: bool
    max_length: int


@dataclass
class Stored:
    """The inputs as the pipeline's stages wrote them: capture directories, one subspaces file per beta, and the
    task's training batches (made on demand)."""

    pos_dir: Path
    neg_dir: Path
    subspaces_file: Callable[[float], Path]
    batches: Callable[[], list[dict]]
    # An aligned model and its unaligned twin (loaders), and the LoRA config whose targets their difference is read
    # on; None where there is no twin (the testbed).
    twins: tuple[Callable[[], nn.Module], Callable[[], nn.Module], LoraConfig] | None = None

    def pos(self) -> CaptureStats:
        from sclora.method.gather import CaptureStats

        return CaptureStats.load(self.pos_dir)

    def neg(self) -> CaptureStats:
        from sclora.method.gather import CaptureStats

        return CaptureStats.load(self.neg_dir)

    def subspaces(self, beta: float) -> Mapping[str, Subspace]:
        from sclora.method.subspace import load_subspaces

        return load_subspaces(self.subspaces_file(beta))

    def task_batches(self) -> list[dict]:
        return self.batches()

    def alignment(self) -> Mapping[str, torch.Tensor]:
        return _alignment(self.twins)


def _alignment(twins) -> Mapping[str, torch.Tensor]:
    from sclora.method.inits import alignment_directions

    if twins is None:
        raise ValueError("no unaligned twin of the model (model.unaligned): Safe LoRA cannot run here (the testbed "
                         "has none)")  # fmt: skip
    aligned, unaligned, lora = twins
    return alignment_directions(aligned(), unaligned(), lora)


@dataclass
class Computed:
    """The inputs computed in process from the base model and the records, each once: D+ (the task) and D- (the
    preserved records) sampled and captured as the capture stage does, SC-LoRA's subspaces solved from them as the
    solve stage does, the task's batches as the Trainer collates them."""

    model: Callable[[], nn.Module]  # the base model, loaded afresh
    tokenizer: PreTrainedTokenizerBase
    task: Sequence[dict]
    preserved: Sequence[dict]
    knobs: CaptureKnobs
    lora: LoraConfig
    normalize: str = "none"
    unaligned: Callable[[], nn.Module] | None = None  # the model's unaligned twin, where there is one (Safe LoRA)
    _cache: dict = field(default_factory=dict, repr=False)

    def _once(self, key: object, make: Callable[[], object]) -> object:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _captured(self, records: Sequence[dict], count: int) -> CaptureStats:
        from sclora.method.gather import capture
        from sclora.runs.data import chat_batches

        knobs = self.knobs
        batches = chat_batches(self.tokenizer, sample(records, count), knobs.batch_size, knobs.max_length)
        targets = self.lora.target_modules
        return capture(self.model(), batches, targets, covariance=knobs.covariance, progress=False)

    def pos(self) -> CaptureStats:
        return self._once("pos", lambda: self._captured(self.task, self.knobs.samples_pos))

    def neg(self) -> CaptureStats:
        return self._once("neg", lambda: self._captured(self.preserved, self.knobs.samples_neg))

    def subspaces(self, beta: float) -> Mapping[str, Subspace]:
        from sclora.method.subspace import sclora_subspaces

        def solved():
            model, pos, neg = self.model(), self.pos(), self.neg()
            return sclora_subspaces(model, self.lora, pos, neg, beta, rank=self.lora.r, normalize=self.normalize)

        return self._once(("subspaces", beta), solved)

    def task_batches(self) -> list[dict]:
        from sclora.runs.data import training_batches

        knobs, first = self.knobs, self.task[: self.knobs.samples_pos]
        return self._once(
            "batches", lambda: training_batches(self.tokenizer, first, knobs.batch_size, knobs.max_length)
        )

    def alignment(self) -> Mapping[str, torch.Tensor]:
        twins = None if self.unaligned is None else (self.model, self.unaligned, self.lora)
        return self._once("alignment", lambda: _alignment(twins))


class Given:
    """Inputs the caller computed itself; asking for one it did not give is an error."""

    def __init__(self, *, pos=None, neg=None, subspaces=None, task_batches=None, alignment=None):
        self._values = {"pos": pos, "neg": neg, "subspaces": subspaces, "task_batches": task_batches,
                        "alignment": alignment}  # fmt: skip

    def _need(self, name: str) -> object:
        if self._values[name] is None:
            raise ValueError(f"no {name} given")
        return self._values[name]

    def pos(self) -> CaptureStats:
        return self._need("pos")

    def neg(self) -> CaptureStats:
        return self._need("neg")

    def subspaces(self, beta: float) -> Mapping[str, Subspace]:
        return self._need("subspaces")

    def task_batches(self) -> list[dict]:
        return self._need("task_batches")

    def alignment(self) -> Mapping[str, torch.Tensor]:
        return self._need("alignment")
