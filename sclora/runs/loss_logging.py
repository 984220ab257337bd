"""The HF Trainer callback that logs the training loss into an MLflow run (sclora.ops.tracking's runs).

Apart from sclora.ops.tracking because it subclasses transformers' TrainerCallback: importing the Trainer's machinery
(PEFT included) costs seconds, and the stages that only log or register never train.
"""

from __future__ import annotations

import time

import mlflow
from mlflow.entities import Metric
from transformers import TrainerCallback

from sclora.ops.tracking import TrackingError, metric_values


class MlflowLossCallback(TrainerCallback):
    """Logs `train_loss` (and learning rate, grad norm) at every logged training step into one run.

    The run is the active run when the callback is made, or `run_id`; logging by id keeps
    it right even if the active run changes while the Trainer runs. Steps are sent in
    batches of `flush_every` (and at every checkpoint and at the end): one store write per
    metric per step cost more than the training step itself on a small model.
    """

    def __init__(self, run_id: str | None = None, flush_every: int = 50):
        active = mlflow.active_run()
        if run_id is None and active is None:
            raise TrackingError("MlflowLossCallback: no active MLflow run and no run_id given")
        self.run_id = run_id or active.info.run_id
        self.client = mlflow.MlflowClient()
        self.flush_every = flush_every
        self.pending: list[Metric] = []
        self.pending_steps = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        values = {
            "train_loss": logs["loss"],
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
        }
        now = int(time.time() * 1000)
        self.pending += [Metric(key, value, now, state.global_step) for key, value in metric_values(values).items()]
        self.pending_steps += 1
        if self.pending_steps >= self.flush_every:
            self.flush()

    def on_save(self, args, state, control, **kwargs):
        self.flush()  # what a resumed run will not log again is in the store

    def on_train_end(self, args, state, control, **kwargs):
        self.flush()

    def flush(self) -> None:
        # log_batch takes at most 1000 metrics per call.
        while self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending[:1000])
            self.pending = self.pending[1000:]
        self.pending_steps = 0
