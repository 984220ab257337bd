"""Scoring a run along its training: the model evaluated in process at chosen steps, so a run is a curve.

A learning rate's run read only at its last step hides how fast it learned and where along the way it
started to forget; a checkpoint written to disk and scored by another process costs a model load per
point. `StepEvaluation` calls the caller's scorer on the live model at each chosen step (the Trainer has
no "evaluate this model with my own suite at step k" hook that returns the result to the caller).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import TrainerCallback


def checkpoint_steps(max_steps: int, fractions: Sequence[float]) -> list[int]:
    """The steps at `fractions` of `max_steps` (each rounded, at least 1), distinct and sorted."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad or not fractions:
        raise ValueError(f"checkpoint fractions must be in (0, 1], got {list(fractions)}")
    return sorted({max(1, round(f * max_steps)) for f in fractions})


class StepEvaluation(TrainerCallback):
    """At each of `steps`, `score(model, step)` on the model in eval mode and without gradients; the results in
    `self.points` in step order. Training resumes in train mode with the same weights."""

    def __init__(self, steps: Sequence[int], score: Callable[[torch.nn.Module, int], dict]):
        self.steps, self.score = set(steps), score
        self.points: list[dict] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps and state.is_world_process_zero:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                self.points.append({"step": state.global_step, **self.score(model, state.global_step)})
            model.train(was_training)
