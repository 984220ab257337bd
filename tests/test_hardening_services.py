"""Unreachable services: an MLflow tracking URI or a Prefect API nobody answers gives one clear line, fast, and
leaves nothing half-done (no files under artifacts/, no registered model version).

A sweep where one grid point fails while the others complete is
tests/test_flows.py::test_sweep_runs_each_point_as_a_dvc_experiment_and_reports_failures.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from stage_project import files, stage

from flows.cli import main  # imported before PREFECT_API_URL is set: `flows` reads it once, at import
from sclora.ops import registry, tracking


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_mlflow_fails_the_stage_fast_and_writes_nothing(project, capsys, monkeypatch):
    assert stage("prepare") == 0
    written = files(project)
    capsys.readouterr()
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    assert stage("train", "benign-lora-0") == 1
    assert time.monotonic() - started < 30
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: train: MLflow tracking store {uri} unreachable: ")
    assert files(project) == written  # no checkpoints, no run directory


def _adapter(directory: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(directory)
    return directory


def test_artifact_store_failing_mid_registration_registers_no_version(project, monkeypatch):
    uri = f"sqlite:///{project / 'mlflow.db'}"
    adapter = _adapter(project / "adapter")

    def unreachable(*args, **kwargs):
        raise MlflowException("API request to the artifact store failed: connection refused")

    with tracking.parent_run("p", uri=uri) as run:
        monkeypatch.setattr(mlflow.MlflowClient, "log_artifacts", unreachable)
        with pytest.raises(MlflowException, match="connection refused"):
            registry.register_adapter(adapter, "sclora-adapter", {"utility": 0.5}, run_id=run.info.run_id)
    # The version is created only after its files are stored: none points at a missing adapter.
    assert mlflow.MlflowClient().search_model_versions("name = 'sclora-adapter'") == []


def test_unreachable_prefect_api_is_one_line(project, capsys, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    for command in (["run"], ["sweep", "--grid", "train.lr=[0.001, 0.002]"]):
        started = time.monotonic()
        assert main(command) == 1
        assert time.monotonic() - started < 30
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {command[0]}: Prefect API {url} (PREFECT_API_URL) unreachable: ")
        assert "\n" not in err
    assert files(project) == {}
