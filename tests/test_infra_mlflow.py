"""The team MLflow server's basic-auth app (infra/mlflow/), run for real on loopback with SQLite stores.

The pipeline's tracking code (sclora.ops.tracking: parent and child runs, metrics, a registered adapter)
logs with a user's credentials from MLFLOW_TRACKING_USERNAME/PASSWORD; without credentials, or with
a wrong password, the server refuses it and nothing is written.
"""

from __future__ import annotations

import json
import os

import mlflow
import pytest
from infra_servers import ADMIN, mlflow_auth_server, servers
from mlflow.server import get_app_client

from sclora.ops import registry, tracking

pytestmark = pytest.mark.services  # an MLflow server
USER = ("sclora-pipeline", "pipeline-password-for-tests")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    with servers(mlflow_auth_server(tmp_path_factory.mktemp("mlflow"))) as (url,):
        yield url


def as_user(monkeypatch, user: tuple[str, str] | None) -> None:
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a refusal is final: fail at once
    if user is not None:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])


def stored(server: str, monkeypatch) -> tuple[set[str], int, list[str]]:
    """What the server holds, read as the admin: experiment names, run count, registered model names."""
    as_user(monkeypatch, ADMIN)
    client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments]) if experiments else []
    return {e.name for e in experiments}, len(runs), [m.name for m in client.search_registered_models()]


@pytest.fixture(scope="module")
def pipeline_user(server) -> tuple[str, str]:
    """A non-admin user created by the admin, as a team would for its pipeline's service account."""
    with pytest.MonkeyPatch.context() as patch:
        as_user(patch, ADMIN)
        get_app_client("basic-auth", tracking_uri=server).create_user(*USER)
    return USER


def test_the_pipeline_logs_and_registers_with_credentials(server, pipeline_user, monkeypatch, tmp_path):
    as_user(monkeypatch, pipeline_user)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"init_lora_weights": True}))
    with tracking.parent_run("pipeline", experiment="team", uri=server) as parent:
        parent_id = parent.info.run_id
    with tracking.child_run("benign", "lora", None, 0, parent_run_id=parent_id, uri=server) as child:
        tracking.log_metrics({"utility": 0.75, "forgetting": {"knowledge": 0.01}})
        version = registry.register_adapter(adapter, "team-adapter", {"utility": 0.75}, run_id=child.info.run_id)

    as_user(monkeypatch, ADMIN)
    client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
    run = client.get_run(child.info.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent_id
    assert run.data.metrics["utility"] == 0.75 and run.data.metrics["forgetting_knowledge"] == 0.01
    assert [a.path for a in client.list_artifacts(run.info.run_id, "adapter")] == ["adapter/adapter_config.json"]
    assert client.get_model_version_by_alias("team-adapter", "candidate").version == version


@pytest.mark.parametrize("user", [None, (USER[0], "wrong-password")], ids=["no credentials", "wrong password"])
def test_without_valid_credentials_it_is_refused_and_nothing_is_written(server, pipeline_user, monkeypatch, user):
    before = stored(server, monkeypatch)
    as_user(monkeypatch, user)
    with pytest.raises(tracking.TrackingError, match=r"401"):
        tracking.use_store(server)
    with pytest.raises(tracking.TrackingError, match=r"401"):
        with tracking.parent_run("pipeline", experiment="intruder", uri=server):
            pass
    client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"401"):  # the raw API too, past tracking's probe
        client.create_experiment("intruder")
    assert stored(server, monkeypatch) == before
