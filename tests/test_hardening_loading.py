"""Safe loading: weights only from safetensors (a pickle is never unpickled), model code shipped with the
weights runs only when params say so, and secrets come from the environment and never reach MLflow."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import mlflow
import pytest
from stage_project import REPO, stage

from sclora.ops.config import ParamsError, load_params

SECRET = "sk-test-5ecret-value-0123456789"


class Payload:
    """Unpickling this runs `Path(marker).touch()`: proof that a loader unpickled the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _pickle_bomb(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Payload(marker)))


def test_pickled_model_weights_are_refused_unread(project, capsys):
    model = Path("models/pickled")
    shutil.copytree("artifacts/testbed/base", model)
    (model / "model.safetensors").unlink()
    _pickle_bomb(model / "pytorch_model.bin", project / "unpickled")
    assert stage("prepare", "-S", f"model.path={model}") == 0  # the tokenizer loads; no weights are needed
    assert stage("capture", "-S", f"model.path={model}") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: capture: {model}: cannot load the model: ") and "model.safetensors" in err
    assert not (project / "unpickled").exists()


def test_pickled_adapter_weights_are_refused_unread(tmp_path):
    from sclora.runs.models import load_with_adapter

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    _pickle_bomb(adapter / "adapter_model.bin", tmp_path / "unpickled")
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        load_with_adapter(REPO / "does-not-matter", adapter)
    assert not (tmp_path / "unpickled").exists()


def test_no_pickle_loading_in_the_code():
    """torch.load and pickle are not called anywhere in sclora/, tasks/ or flows/ (checkpoints load through the
    Trainer, whose torch.load calls pass weights_only=True: see the resume test in test_hardening_crashes.py)."""
    calls = [
        f"{path.relative_to(REPO)}:{number}"
        for folder in ("sclora", "tasks", "flows")
        for path in sorted((REPO / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if any(call in line for call in ("torch.load(", "pickle.load", "import pickle", "joblib.load"))
    ]
    assert calls == []


@pytest.mark.parametrize("trusted", [False, True])
def test_trust_remote_code_comes_from_params(project, monkeypatch, trusted):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen = []
    for owner in (AutoTokenizer, AutoModelForCausalLM, PeftModel):
        original = owner.from_pretrained.__func__

        def recorded(cls, *args, _original=original, **kwargs):
            seen.append((cls.__name__, kwargs.get("trust_remote_code")))
            return _original(cls, *args, **kwargs)

        monkeypatch.setattr(owner, "from_pretrained", classmethod(recorded))
    overrides = ["-S", f"model.trust_remote_code={str(trusted).lower()}"]
    for name in ("prepare", "capture", "evaluate_base"):
        assert stage(name, *overrides) == 0
    assert {cls for cls, _ in seen} == {"AutoTokenizer", "AutoModelForCausalLM"}
    assert all(value is trusted for _, value in seen), seen


def test_code_shipped_with_the_weights_does_not_run_by_default(project):
    model = Path("models/remote")
    shutil.copytree("artifacts/testbed/base", model)
    marker = project / "remote-code-ran"
    (model / "modeling_evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (model / "config.json").write_text(json.dumps(config))
    assert stage("prepare", "-S", f"model.path={model}") == 0
    assert stage("capture", "-S", f"model.path={model}") == 0  # the library's own Llama class, not the shipped one
    assert not marker.exists()


def test_secrets_stay_in_the_environment(project, monkeypatch):
    for name in ("OPENAI_API_KEY", "MLFLOW_TRACKING_PASSWORD", "HF_TOKEN"):
        monkeypatch.setenv(name, SECRET)
    for name in ("prepare", "evaluate_base"):
        assert stage(name) == 0
    assert stage("train", "benign-lora-0") == 0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 2  # the pipeline's parent run and this configuration's child run
    logged = [value for run in runs for value in (*run.data.params.items(), *run.data.tags.items())]
    assert len(logged) > 20 and not [item for item in logged if SECRET in str(item)]
    assert not [key for run in runs for key in run.data.params if "api_key" in key]  # the variable's name neither
    stored = [project / "mlflow.db", *Path("mlartifacts").rglob("*"), *Path("artifacts").rglob("*")]
    assert not [path for path in stored if path.is_file() and SECRET.encode() in path.read_bytes()]
    # And params cannot carry one: the judge takes the name of the variable that holds its key.
    with pytest.raises(ParamsError, match="unknown key 'eval.judge.api_key'"):
        load_params("params.yaml", [f"eval.judge.api_key={SECRET}"])
