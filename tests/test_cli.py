"""The `sclora` command line: help on everything, one-line errors with a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.cli import COMMANDS, main
from sclora.ops.config import ParamsError

REPO = Path(__file__).resolve().parent.parent


def one_error_line(capsys) -> str:
    """The CLI's error: one line, the last on stderr (libraries may log before it, e.g. MLflow's store set-up)."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert not any("Traceback" in line for line in err), err
    return errors[0]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_on_everything(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(([command] if command else []) + ["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sclora {command}" if command else "usage: sclora")
    if command is None:
        assert all(name in out for name in COMMANDS)


def test_check_params_accepts_the_default_params(capsys):
    assert main(["check-params", str(REPO / "params.yaml")]) == 0
    assert capsys.readouterr().out.strip() == f"{REPO / 'params.yaml'}: ok"


def test_check_params_rejects_a_bad_file_in_one_line(tmp_path, capsys):
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["train"]["max_steps"] = -5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(params), encoding="utf-8")
    assert main(["check-params", str(bad)]) == 1
    line = one_error_line(capsys)
    assert line.startswith("error: check-params: ") and "train.max_steps" in line
    # An override is checked the same way.
    assert main(["check-params", str(REPO / "params.yaml"), "-S", "adapter.rank=0"]) == 1
    assert "adapter.rank" in one_error_line(capsys)
    # --debug shows the exception itself.
    with pytest.raises(ParamsError):
        main(["--debug", "check-params", str(bad)])


def test_promote_of_an_unknown_model_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(params), encoding="utf-8")
    assert main(["promote", "no-such-model", "1", "--params", str(file)]) == 1
    assert one_error_line(capsys) == "error: promote: registered model 'no-such-model' not found"


def test_run_with_a_missing_params_file_fails_before_any_flow(tmp_path, capsys):
    assert main(["run", "--params", str(tmp_path / "missing.yaml")]) == 1
    line = one_error_line(capsys)
    assert line.startswith("error: run: ") and "missing.yaml" in line


def test_run_with_no_jobs_fails_before_any_flow(capsys):
    assert main(["run", "--jobs", "0"]) == 1
    assert one_error_line(capsys) == "error: run: --jobs must be >= 1, got 0"


def test_sweep_grid_must_be_a_list(capsys):
    assert main(["sweep", "--grid", "train.lr=0.1"]) == 1
    assert one_error_line(capsys) == "error: sweep: --grid 'train.lr=0.1': expected KEY=[value, ...]"
