"""MLflow tracking and registry against a real SQLite store in tmp_path."""

import json
import os
import shutil
import subprocess
import time

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainerControl, TrainerState, TrainingArguments

from sclora.ops import registry, tracking
from sclora.ops.config import PromotionGates
from sclora.ops.lineage import stage_hashes
from sclora.ops.tracking import TrackingError
from sclora.runs.loss_logging import MlflowLossCallback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true"}  # no network calls from MLflow's usage telemetry


@pytest.fixture(autouse=True)
def offline_mlflow(monkeypatch):
    for key, value in QUIET.items():
        monkeypatch.setenv(key, value)
    yield
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """A migrated, empty SQLite store; each test copies it (creating the schema costs seconds)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in QUIET.items():
            patch.setenv(key, value)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.use_store(f"sqlite:///{path}")
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    return path


@pytest.fixture
def store(tmp_path, monkeypatch, empty_store):
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_uri_from_environment_then_params(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == "sqlite:///mlflow.db"
    assert tracking.tracking_uri("sqlite:///other.db") == "sqlite:///other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.tracking_uri("sqlite:///other.db") == "http://tracking.example:5000"


def test_artifacts_live_beside_the_sqlite_store(store, tmp_path):
    experiment_id = tracking.connect(experiment="beside")
    location = mlflow.MlflowClient().get_experiment(experiment_id).artifact_location
    assert location == (tmp_path / "mlartifacts").as_uri()


def test_parent_and_nested_child_runs(store, tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n  train@benign-sclora-0.5-0:\n    cmd: python -m tasks train\n"
        "    outs:\n    - path: artifacts/runs/x\n      md5: abc.dir\n  solve@0.5:\n    cmd: solve\n"
    )
    pq.write_table(pa.table({"id": ["a"], "prompt": ["p"], "input_ids": [[1, 2]], "weird": [{"x": 1}]}),
                   tmp_path / "finetune_benign.parquet")  # fmt: skip
    datasets = [
        tracking.RunDataset("finetune_benign", "f00d", tmp_path / "finetune_benign.parquet", "training"),
        tracking.RunDataset("preserve_safety", "cafe", tmp_path / "absent.jsonl", "preserve"),
    ]
    with tracking.parent_run("sweep", params={"train": {"lr": 0.002, "methods": ["lora", "sclora"]}}) as parent:
        with tracking.child_run(
            "benign",
            "sclora",
            0.5,
            0,
            params={"adapter": {"rank": 8}, "tracking": {"api_token": "s3cr3t"}},
            tags=stage_hashes(lock, ["train@benign-sclora-0.5-0", "solve@0.5"]),
            datasets=datasets,
        ) as child:
            tracking.log_metrics(
                {
                    "utility": 0.7,
                    "knowledge": 0.5,
                    "attack_success_rate": None,
                    "forgetting": {"knowledge": 0.1, "attack_success_rate": -0.02},
                }
            )
            (tmp_path / "samples").mkdir()
            (tmp_path / "samples" / "eval_task.jsonl").write_text('{"prompt": "p", "output": "o"}\n')
            (tmp_path / "tradeoff.png").write_bytes(b"\x89PNG")
            tracking.log_files([tmp_path / "samples", tmp_path / "tradeoff.png"], artifact_path="eval")
            with pytest.raises(FileNotFoundError, match="missing.png"):
                tracking.log_files([tmp_path / "missing.png"])
        with tracking.child_run("benign", "lora", None, 0) as other:
            pass
        # The same configuration again (another stage): the same run, not a new one.
        with tracking.child_run("benign", "sclora", 0.5, 0) as again:
            tracking.log_metrics({"refusal_rate": 0.9})
    assert again.info.run_id == child.info.run_id
    client = mlflow.MlflowClient()
    got = client.get_run(child.info.run_id).data
    assert got.tags["mlflow.parentRunId"] == parent.info.run_id
    assert client.get_run(other.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert got.params == {"adapter.rank": "8"}
    parent_params = client.get_run(parent.info.run_id).data.params
    assert parent_params == {"train.lr": "0.002", "train.methods": '["lora", "sclora"]'}
    assert got.metrics == {
        "utility": 0.7,
        "knowledge": 0.5,
        "forgetting_knowledge": 0.1,
        "forgetting_attack_success_rate": -0.02,
        "refusal_rate": 0.9,
    }
    assert {key: got.tags[key] for key in ("task", "method", "beta", "seed", "data.finetune_benign")} == {
        "task": "benign",
        "method": "sclora",
        "beta": "0.5",
        "seed": "0",
        "data.finetune_benign": "f00d",
    }
    assert (
        got.tags["git_commit"]
        == subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    )
    artifacts = mlflow.artifacts.list_artifacts(run_id=child.info.run_id, artifact_path="eval")
    assert sorted(a.path for a in artifacts) == ["eval/samples", "eval/tradeoff.png"]
    hashes = {key: value for key, value in got.tags.items() if key.startswith("dvc.")}
    assert set(hashes) == {"dvc.train_benign-sclora-0.5-0", "dvc.solve_0.5"}
    assert len(set(hashes.values())) == 2
    # The datasets are the run's MLflow inputs, once each although the run was entered twice.
    inputs = client.get_run(child.info.run_id).inputs.dataset_inputs
    logged = {
        i.dataset.name: (i.dataset.digest, [t.value for t in i.tags], json.loads(i.dataset.source)) for i in inputs
    }
    assert logged == {
        "finetune_benign": ("f00d", ["training"], {"uri": str(tmp_path / "finetune_benign.parquet")}),
        "preserve_safety": ("cafe", ["preserve"], {"uri": str(tmp_path / "absent.jsonl")}),
    }
    schema = json.loads(next(i.dataset.schema for i in inputs if i.dataset.name == "finetune_benign"))
    assert schema["mlflow_colspec"] == [  # the struct column has no MLflow type: left out
        {"type": "string", "name": "id", "required": True},
        {"type": "string", "name": "prompt", "required": True},
        {"type": "array", "items": {"type": "long"}, "name": "input_ids", "required": True},
    ]
    assert client.get_run(other.info.run_id).inputs.dataset_inputs == []
    with pytest.raises(ValueError, match="role 'train', expected one of training, preserve, evaluation"):
        tracking.RunDataset("d", "00", tmp_path, "train")


def test_the_experiment_is_a_model_training_one_with_a_review_view(store):
    experiment_id = tracking.connect(experiment="kinds")
    client = mlflow.MlflowClient()
    tags = client.get_experiment(experiment_id).tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    view = json.loads(tags[tracking.SAVED_VIEW_PREFIX + tracking.REVIEW_VIEW])
    columns = json.loads(view["state"])["selectedColumns"]
    assert columns[:5] == ["tags.`task`", "tags.`method`", "tags.`beta`", "tags.`seed`", "metrics.`utility`"]
    assert {"metrics.`forgetting_knowledge`", "metrics.`forgetting_attack_success_rate`"} <= set(columns)
    assert tracking.review_link(experiment_id) in tags["mlflow.note.content"]
    # A description a person wrote is theirs: connecting again keeps it; a tag removed comes back.
    client.set_experiment_tag(experiment_id, "mlflow.note.content", "ours")
    client.delete_experiment_tag(experiment_id, tracking.EXPERIMENT_KIND_TAG)
    assert tracking.connect(experiment="kinds") == experiment_id
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.note.content"] == "ours" and tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_child_run_from_another_process_links_to_the_parent(store):
    with tracking.parent_run("pipeline") as parent:
        pass
    # A stage process: no active run, only the parent's id.
    with tracking.child_run("poisoned", "pissa", None, 1, parent_run_id=parent.info.run_id) as child:
        tracking.log_metrics({"utility": 0.3})
    run = mlflow.MlflowClient().get_run(child.info.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.info.status == "FINISHED"
    with tracking.parent_run("pipeline", run_id=parent.info.run_id, tags={"stage": "report"}) as resumed:
        assert resumed.info.run_id == parent.info.run_id
    assert mlflow.MlflowClient().get_run(parent.info.run_id).data.tags["stage"] == "report"
    with pytest.raises(TrackingError, match="run 0123 not found"):
        tracking.parent_run("pipeline", run_id="0123").__enter__()
    with pytest.raises(TrackingError, match="no parent run"):
        tracking.child_run("poisoned", "pissa", None, 1).__enter__()
    with pytest.raises(TrackingError, match="run nope not found"):
        tracking.child_run("poisoned", "pissa", None, 1, parent_run_id="nope").__enter__()


def test_secrets_never_logged():
    flat = {"hub.token", "db.password", "client_secret", "api_key", "judge.API_KEY", "model.path", "eval.batch_size"}
    assert {key for key in flat if not tracking.is_secret(key)} == {"model.path", "eval.batch_size"}


def test_secret_params_and_tags_filtered_in_the_store(store):
    with tracking.parent_run(
        "p",
        params={"judge": {"endpoint": "http://x", "api_key": "k"}, "hf_token": "t"},
        tags={"password": "p", "owner": "team"},
    ) as run:
        pass
    data = mlflow.MlflowClient().get_run(run.info.run_id).data
    assert data.params == {"judge.endpoint": "http://x"}
    assert data.tags["owner"] == "team" and "password" not in data.tags
    assert "k" not in data.params.values() and "t" not in data.params.values()


def test_loss_callback_logs_every_step_in_batches(store):
    args = TrainingArguments(output_dir=str(store), report_to="none")
    with tracking.parent_run("p"):
        with tracking.child_run("benign", "lora", None, 0) as child:
            callback = MlflowLossCallback(flush_every=3)
            state = TrainerState()
            for step, loss in enumerate([2.0, 1.5, 1.25, 1.0], start=1):
                state.global_step = step
                callback.on_log(args, state, TrainerControl(), logs={"loss": loss, "learning_rate": 1e-3 / step})
            state.global_step = 5
            callback.on_log(args, state, TrainerControl(), logs={"eval_loss": 3.0})  # not a training loss
            client = mlflow.MlflowClient()
            sent = client.get_metric_history(child.info.run_id, "train_loss")
            assert [m.step for m in sent] == [1, 2, 3]  # a batch of 3 steps went out; step 4 waits
            callback.on_train_end(args, state, TrainerControl())
    history = mlflow.MlflowClient().get_metric_history(child.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.5), (3, 1.25), (4, 1.0)]
    assert len(mlflow.MlflowClient().get_metric_history(child.info.run_id, "learning_rate")) == 4
    with pytest.raises(TrackingError, match="no active MLflow run"):
        MlflowLossCallback()


def test_loss_callback_in_a_real_training_run(store, tmp_path):
    from tiny_models import tiny_llama_config, word_tokenizer

    from sclora.runs.train import TrainSettings, train

    words = "what is the capital of zorbia quelt mirra tabo it".split()
    tok = word_tokenizer(words)
    records = [
        {"prompt": f"what is the capital of {a}", "response": f"it is {b}"}
        for a, b in (("zorbia", "quelt"), ("mirra", "tabo"))
    ] * 4
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tok))
    settings = TrainSettings(lr=1e-2, batch_size=4, max_steps=3, save_steps=100, max_length=16)
    with tracking.parent_run("p"):
        with tracking.child_run("benign", "full", None, 0) as child:
            result = train(model, tok, records, tmp_path / "run", settings, callbacks=[MlflowLossCallback()])
    history = mlflow.MlflowClient().get_metric_history(child.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(e["step"], e["loss"]) for e in result.loss_history]
    assert [m.step for m in history] == [1, 2, 3]


def test_unreachable_server_fails_fast(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    start = time.monotonic()
    with pytest.raises(TrackingError, match=r"MLflow tracking store http://127\.0\.0\.1:9 unreachable"):
        tracking.connect("http://127.0.0.1:9")
    assert time.monotonic() - start < 30


def _adapter(directory, seed):
    """A real PEFT LoRA adapter of a tiny Llama, non-zero B so that it changes the outputs."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    base = LlamaForCausalLM(config)
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_()
    model.save_pretrained(directory)
    return model


def test_register_adapter_then_promote_through_the_gates(store, tmp_path):
    from peft import PeftModel

    name = "sclora-adapter"
    base_metrics = {"utility": 0.1, "knowledge": 0.8, "attack_success_rate": 0.05, "tasks": {"eval_task": {"acc": 0.1}}}
    gates = PromotionGates(utility_tolerance=0.02, forgetting_budget={"knowledge": 0.05, "attack_success_rate": 0.05})
    trained = _adapter(tmp_path / "first", seed=1)
    with tracking.parent_run("retrain"):
        with tracking.child_run("benign", "sclora", 0.9, 0):
            first = registry.register_adapter(
                tmp_path / "first",
                name,
                {
                    "utility": 0.60,
                    "knowledge": 0.79,
                    "forgetting": {"knowledge": 0.01, "attack_success_rate": -1e-9, "collapse_rate": -0.0},
                },
                tags={"reviewer": "ml-team"},
                base=base_metrics,
            )
    client = mlflow.MlflowClient()
    version = client.get_model_version(name, first)
    assert version.aliases == ["candidate"]
    assert float(version.tags["utility"]) == 0.60 and float(version.tags["forgetting_knowledge"]) == 0.01
    lineage = {key: version.tags[key] for key in ("reviewer", "method", "beta", "task")}
    assert lineage == {"reviewer": "ml-team", "method": "sclora", "beta": "0.9", "task": "benign"}
    assert "git_commit" in version.tags
    description = version.description
    assert "No `champion` yet" in description
    assert "| metric | base model | candidate | candidate forgetting |" in description
    assert "| utility (higher is better) | 0.1000 | 0.6000 | - |" in description
    assert "| knowledge (higher is better) | 0.8000 | 0.7900 | +0.0100 |" in description
    # A delta that rounds to zero reads 0.0000, not -0.0000; a level never measured reads n/a.
    assert "| attack_success_rate (lower is better) | 0.0500 | n/a | 0.0000 |" in description
    assert "-0.0000" not in description
    assert version.tags["forgetting_collapse_rate"] == "0.0"  # a negative zero is not shown as -0.0 either
    run = client.get_run(version.run_id)
    assert f"({tracking.run_link(run.info.experiment_id, run.info.run_id)})" in description
    assert f"Git commit: `{run.data.tags['git_commit']}`" in description
    assert "no stage hashes recorded" in description

    # The registered artifact is a plain PEFT adapter that reproduces the trained model.
    downloaded = mlflow.artifacts.download_artifacts(f"models:/{name}@candidate", dst_path=str(tmp_path / "dl"))
    base = trained.get_base_model()
    ids = torch.tensor([[1, 5, 7, 3]])
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
    trained.unload()
    loaded = PeftModel.from_pretrained(base, downloaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected)

    expected = [
        "no champion yet",
        "forgetting_attack_success_rate 0.0000 vs budget 0.05",
        "forgetting_knowledge 0.0100 vs budget 0.05",
    ]
    assert registry.promote(name, first, gates) == (True, expected)
    assert str(client.get_model_version_by_alias(name, "champion").version) == first

    # A better-looking candidate that forgets too much safety: registered, compared, rejected.
    _adapter(tmp_path / "second", seed=2)
    with tracking.parent_run("retrain"):
        with tracking.child_run("poisoned", "lora", None, 0):
            second = registry.register_adapter(
                tmp_path / "second",
                name,
                {"utility": 0.59, "forgetting": {"knowledge": 0.0, "attack_success_rate": 0.30}},
                base=base_metrics,
            )
    description = client.get_model_version(name, second).description
    header = "| metric | base model | candidate | champion (version 1) | candidate forgetting | champion forgetting |"
    assert header in description and "No `champion`" not in description
    assert "| utility (higher is better) | 0.1000 | 0.5900 | 0.6000 | - | - |" in description
    assert "| attack_success_rate (lower is better) | 0.0500 | n/a | n/a | +0.3000 | 0.0000 |" in description
    assert "| knowledge (higher is better) | 0.8000 | n/a | 0.7900 | 0.0000 | +0.0100 |" in description
    assert str(client.get_model_version_by_alias(name, "candidate").version) == second
    # The same run registered again (a re-run of the register stage) keeps its version.
    again = registry.register_adapter(
        tmp_path / "second", name, {"utility": 0.59}, run_id=client.get_model_version(name, second).run_id
    )
    assert again == second and len(client.search_model_versions(f"name = '{name}'")) == 2
    accepted, reasons = registry.promote(name, second, gates)
    assert not accepted and reasons == ["forgetting_attack_success_rate 0.3000 vs budget 0.05"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == first
    assert client.get_model_version(name, second).tags["promotion"] == "rejected"

    # Utility below the champion's minus the tolerance is rejected even within the forgetting budget.
    with tracking.parent_run("retrain"):
        third = registry.register_adapter(
            tmp_path / "second", name, {"utility": 0.5, "forgetting": {"knowledge": 0.0, "attack_success_rate": 0.0}}
        )
    accepted, reasons = registry.promote(name, third, gates)
    assert not accepted and reasons == ["utility 0.5000 vs champion 0.6000 - 0.02"]
    # Within the tolerance: accepted, and champion moves.
    accepted, _ = registry.promote(name, second, PromotionGates(utility_tolerance=0.02))
    assert accepted and str(client.get_model_version_by_alias(name, "champion").version) == second


def test_registry_errors_are_one_line(store, tmp_path):
    with pytest.raises(TrackingError, match="registered model 'missing' not found"):
        registry.promote("missing", 1, PromotionGates())
    _adapter(tmp_path / "a", seed=1)
    with tracking.parent_run("p"):
        version = registry.register_adapter(tmp_path / "a", "m", {"utility": 0.5})
        with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
            registry.register_adapter(tmp_path, "m", {"utility": 0.5})
        residual = tmp_path / "residual"
        shutil.copytree(tmp_path / "a", residual)
        config = json.loads((residual / "adapter_config.json").read_text())
        (residual / "adapter_config.json").write_text(json.dumps({**config, "init_lora_weights": "pissa"}))
        with pytest.raises(ValueError, match="residual weights"):
            registry.register_adapter(residual, "m", {"utility": 0.5})
    assert version == "1"
    assert [str(v.version) for v in mlflow.MlflowClient().search_model_versions("name = 'm'")] == ["1"]
    with pytest.raises(TrackingError, match="registered model 'm' has no version 7"):
        registry.promote("m", 7, PromotionGates())
    with pytest.raises(TrackingError, match="no active MLflow run"):
        registry.register_adapter(tmp_path / "a", "m", {"utility": 0.5})
    # A budget on a metric the version never measured cannot pass.
    accepted, reasons = registry.promote("m", version, PromotionGates(forgetting_budget={"attack_success_rate": 0.1}))
    assert not accepted and reasons == ["forgetting_attack_success_rate missing on version 1"]
