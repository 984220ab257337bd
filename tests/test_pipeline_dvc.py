"""The repository's dvc.yaml run for real in a temporary git + DVC copy of the repository, on a tiny grid.

Tiny testbed, one task, two baselines (lora, pissa) and SC-LoRA at one beta, a few steps, MLflow in a
SQLite file under tmp: the session's `tiny_repro` (conftest.py). Checks every stage's outputs, that DVC
sees the workspace as clean, that `dvc metrics show` has every run's metrics, and that a second
`dvc repro` runs nothing. The pipeline and select_beta flows then run on copies of that workspace, under
Prefect's test server, after MLflow's UI is checked in a real browser. Every test that needs `tiny_repro` is in
this file, so that it is made once (`make test` hands a whole file to one process).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import yaml
from infra_servers import BIN, HOST, Server, base_env, free_port, servers
from stage_project import clean_env, prefect_artifact, run, tiny_params

from flows.frontier import frontier as frontier_flow
from flows.pipeline import pipeline as pipeline_flow
from sclora.ops.tracking import review_link, run_link

pytestmark = pytest.mark.slow
RUNS = ("benign-lora-0", "benign-pissa-0", "benign-sclora-0.8-0")


@pytest.fixture(scope="module")
def pipeline(tiny_repro) -> tuple[Path, dict, str]:
    return tiny_repro.work, tiny_repro.env, tiny_repro.output


def test_repro_runs_every_stage_and_writes_its_outputs(pipeline):
    work, _, output = pipeline
    stages = ["testbed@testbed", "prepare", "capture", "solve@0.8", "forecast", "plan", "evaluate_base",
              "train@benign-lora-0", "train@benign-pissa-0", "train_sclora@benign-sclora-0.8-0", "register",
              "report"]  # fmt: skip
    for stage in stages:
        assert f"Running stage '{stage}'" in output, stage
    art = work / "artifacts"
    fingerprints = json.loads((art / "prepared" / "fingerprints.json").read_text())
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert set(fingerprints) == set(params["data"]["sources"])
    for source in fingerprints:
        assert (art / "prepared" / f"{source}.parquet").is_file()
    for capture in ("neg", "pos-benign"):
        assert (art / "capture" / capture / "manifest.parquet").is_file()
    assert (art / "solve" / "beta-0.8" / "benign.safetensors").is_file()
    spectra = json.loads((art / "solve" / "beta-0.8" / "spectra.json").read_text())
    assert all(len(values) == 2 for values in spectra["benign"].values())  # rank 2 per layer
    base = json.loads((art / "eval" / "base" / "metrics.json").read_text())
    for name in RUNS:
        run_dir = art / "runs" / name
        assert (run_dir / "export" / "adapter_config.json").is_file()
        assert (run_dir / "model").is_dir()
        summary = json.loads((run_dir / "run.json").read_text())
        assert summary["run"] == name and summary["global_step"] == 3
        assert len(json.loads((run_dir / "loss_history.json").read_text())) == 3
        metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
        assert set(metrics["forgetting"]) >= {"knowledge", "refusal_rate"}
        assert metrics["forgetting"]["knowledge"] == pytest.approx(base["knowledge"] - metrics["knowledge"])
    # Checkpoints are removed once a run is complete.
    assert not (art / "checkpoints").exists() or not any((art / "checkpoints").iterdir())
    with (art / "report" / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["run"] for row in rows) == sorted(RUNS)
    assert (art / "report" / "report.md").is_file()
    assert list((art / "report").glob("*.png"))


def test_registry_holds_the_candidate_once(pipeline):
    work, env, _ = pipeline
    registry = json.loads((work / "artifacts" / "registry.json").read_text())
    assert registry["candidate"] in registry["within_budget"]
    assert set(registry["within_budget"]) <= set(RUNS)
    assert registry["utility"][registry["candidate"]] == max(registry["utility"].values())
    run(["dvc", "repro", "--force", "--single-item", "register"], work, env)  # registering again adds nothing
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work.parent / 'mlflow.db'}",
                                 registry_uri=f"sqlite:///{work.parent / 'mlflow.db'}")  # fmt: skip
    candidate = client.get_model_version_by_alias(registry["model"], "candidate")
    assert str(candidate.version) == registry["candidate_version"]
    assert candidate.tags["run"] == registry["candidate"]
    child = client.get_run(candidate.run_id)
    assert child.data.tags["method"] in ("lora", "pissa", "sclora")
    assert "mlflow.parentRunId" in child.data.tags
    assert [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")] == [1, 2, 3]
    assert len(client.search_model_versions(f"name = '{registry['model']}'")) == 1


def test_dvc_sees_a_clean_workspace_with_metrics_and_plots(pipeline):
    work, env, _ = pipeline
    status = json.loads(run(["dvc", "status", "--json"], work, env).strip().splitlines()[-1])
    assert status == {}
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], work, env))
    assert len(metrics) == 1  # the workspace only (DVC names it "" or "workspace")
    files = next(iter(metrics.values()))["data"]
    for name in RUNS:
        data = files[f"artifacts/runs/{name}/eval/metrics.json"]["data"]
        assert 0.0 <= data["utility"] <= 1.0
        assert "knowledge" in data["forgetting"]
    assert "artifacts/eval/base/metrics.json" in files
    plots = json.loads(run(["dvc", "plots", "show", "--json"], work, env))
    assert not plots.get("errors"), plots.get("errors")
    assert any(name.endswith(".png") for name in plots["data"])
    assert f"artifacts/runs/{RUNS[0]}/loss_history.json" in plots["data"]


def test_second_repro_runs_nothing(pipeline):
    work, env, _ = pipeline
    output = run(["dvc", "repro"], work, env)
    assert "Running stage" not in output


# What a reviewer sees in MLflow's own UI: a real `mlflow server` on 127.0.0.1 over a copy of the repro's store
# (copied before the flow tests below write to it), opened in Debian's Chromium through Selenium and Debian's
# chromedriver (.ci/run installs both; Selenium is given both paths, so it never looks for a driver to download).
# Each page checked is saved as a PNG in $SCLORA_UI_SHOTS, else in the test's temporary folder. Where no Chromium
# is installed the tests are skipped and say so; under CI (CI=true) a missing browser fails them instead.
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WAIT_S = 90  # the first page load compiles the UI's bundle on a busy two-core machine
SOURCE_RUN_LINK = "//p[starts-with(normalize-space(.), 'Source run')]/a"  # in a version's description
# The runs table draws only the columns in the window (AG Grid): wide enough for every review column.


@pytest.fixture(scope="module")
def store(tiny_repro, tmp_path_factory) -> Path:
    """A copy of the tiny pipeline's MLflow store (other tests of the session go on writing to the original)."""
    root = tmp_path_factory.mktemp("mlflow-ui")
    shutil.copy(tiny_repro.work.parent / "mlflow.db", root / "mlflow.db")
    return root / "mlflow.db"


@pytest.fixture(scope="module")
def ui(store) -> Iterator[str]:
    """`mlflow server` over the copy, on a free loopback port; its URL."""
    port = free_port()
    # No job runner: its consumers (MLflow's GenAI jobs, which sclora never submits) poll at a CPU's cost.
    env = base_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    command = [str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(port),
               "--backend-store-uri", f"sqlite:///{store}", "--workers", "1"]  # fmt: skip
    url = f"http://{HOST}:{port}"
    with servers(Server(command, env, store.parent / "server.log", url, f"{url}/health")) as [started]:
        yield started


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium driven by Selenium, one for the module."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        message = f"no {CHROMIUM} and {CHROMEDRIVER}: `apt-get install chromium chromium-driver` (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=3200,1200", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("SCLORA_UI_SHOTS") or tmp_path_factory.mktemp("ui-shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def registered(tiny_repro, store) -> dict:
    """The register stage's output, and the candidate version and its run as the store holds them."""
    registry = json.loads((tiny_repro.work / "artifacts" / "registry.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}", registry_uri=f"sqlite:///{store}")
    version = client.get_model_version_by_alias(registry["model"], "candidate")
    source = client.get_run(version.run_id)
    return {"registry": registry, "version": version, "run": source}


def open_page(driver, url: str, expected: str, shot: Path) -> str:
    """Load `url`, wait until the page shows `expected`, close MLflow's assistant panel (it covers a third of
    the window), save a screenshot; the page's visible text."""
    driver.get(url)
    return shown(driver, expected, shot)


def shown(driver, expected: str, shot: Path) -> str:
    """Wait until the page shows `expected`, then as `open_page`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, WAIT_S).until(lambda d: expected in d.find_element(By.TAG_NAME, "body").text)
        for close in driver.find_elements(By.CSS_SELECTOR, "[data-component-id='mlflow.assistant.chat_panel.close']"):
            close.click()
    finally:
        driver.save_screenshot(str(shot))  # what the page showed, also when it never showed `expected`
    return driver.find_element(By.TAG_NAME, "body").text


@pytest.mark.services  # a real MLflow server and a real browser
def test_the_registered_version_shows_its_alias_and_the_comparison_table(ui, browser, registered, shots):
    from selenium.webdriver.common.by import By

    name, version, source = registered["registry"]["model"], registered["version"], registered["run"]
    text = open_page(browser, f"{ui}/#/models/{name}", "candidate", shots / "registered-model.png")
    assert f"Version {version.version}" in text and "@ candidate" in text
    assert not re.findall(r"-0\.0+(?![0-9])", text)  # the version's metric tags: no negative zero

    url = f"{ui}/#/models/{name}/versions/{version.version}"
    text = open_page(browser, url, "base model", shots / "model-version.png")
    assert "@ candidate" in text
    rows = [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "th, td")]
            for row in browser.find_elements(By.CSS_SELECTOR, "table tr")]  # fmt: skip
    header = next(row for row in rows if row and row[0] == "metric")
    assert header == ["metric", "base model", "candidate", "candidate forgetting"]  # no champion yet
    table = {row[0].split(" (")[0]: row[1:] for row in rows if len(row) == len(header) and row != header}
    assert table["utility"][1] == f"{float(version.tags['utility']):.4f}"
    assert table["knowledge"][2] == _signed(float(version.tags["forgetting_knowledge"]))
    assert all(cell != "-0.0000" for cells in table.values() for cell in cells)
    link = browser.find_element(By.XPATH, SOURCE_RUN_LINK)
    assert link.text == source.info.run_name
    assert link.get_attribute("href") == f"{ui}/{run_link(source.info.experiment_id, source.info.run_id)}"
    assert f"Git commit: {source.data.tags['git_commit']}" in text
    hashes = {key.removeprefix("dvc."): value for key, value in source.data.tags.items() if key.startswith("dvc.")}
    assert hashes and all(f"{stage} {digest}" in text for stage, digest in hashes.items())


@pytest.mark.services  # a real MLflow server and a real browser
def test_the_description_links_the_source_run_which_names_each_dataset_and_its_role(ui, browser, registered, shots):
    from selenium.webdriver.common.by import By

    name, version, source = registered["registry"]["model"], registered["version"], registered["run"]
    open_page(browser, f"{ui}/#/models/{name}/versions/{version.version}", "base model", shots / "model-version.png")
    version_page = browser.current_window_handle
    browser.find_element(By.XPATH, SOURCE_RUN_LINK).click()  # MLflow opens a description's links in a new tab
    browser.switch_to.window(next(handle for handle in browser.window_handles if handle != version_page))
    try:
        _check_source_run(browser, source, shots)
    finally:
        browser.close()
        browser.switch_to.window(version_page)


def _check_source_run(browser, source, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    inputs = source.inputs.dataset_inputs
    # The page names the first input and folds the others into "+N", which opens the list of them all.
    folded = f"+{len(inputs) - 1}"
    shown(browser, folded, shots / "source-run.png")
    browser.find_element(By.XPATH, f"//*[text()='{folded}']").click()
    text = shown(browser, f"{inputs[-1].dataset.name} (", shots / "source-run.png")
    assert f"/runs/{source.info.run_id}" in browser.current_url and source.info.run_name in text
    roles = {}
    for given in inputs:
        context = [tag.value for tag in given.tags if tag.key == "mlflow.data.context"]
        roles[given.dataset.name] = context[0]
        # Each one as "name (digest)" with its context as a badge (the UI capitalises it).
        assert f"{given.dataset.name} ({given.dataset.digest})\n{context[0].capitalize()}" in text
    assert roles == {"finetune_benign": "training", "preserve_safety": "preserve", "preserve_knowledge": "preserve",
                     "eval_task": "evaluation", "eval_knowledge": "evaluation", "eval_harmful": "evaluation",
                     "eval_benign": "evaluation"}  # fmt: skip
    assert {given.dataset.digest for given in inputs} == {
        value for key, value in source.data.tags.items() if key.startswith("data.")
    }  # the digests of the `data.<name>` tags


@pytest.mark.services  # a real MLflow server and a real browser
def test_the_experiment_review_view_lists_the_runs_with_their_datasets(ui, browser, registered, store, shots):
    from selenium.webdriver.common.by import By

    experiment_id = registered["run"].info.experiment_id
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([experiment_id], "tags.`sclora.ops.config` LIKE '%'")
    text = open_page(browser, f"{ui}/{review_link(experiment_id)}", "pipeline-", shots / "experiment-runs.png")
    assert "/runs" in browser.current_url and "sclora review" in text
    # The nested runs sit under their pipeline's run, folded as the UI folds them: open each pipeline's run.
    parents = "//*[starts-with(text(), 'pipeline-')]/ancestor::*[@role='gridcell'][1]"
    for name_cell in browser.find_elements(By.XPATH, parents):
        name_cell.find_element(By.CSS_SELECTOR, "button").click()
    text = shown(browser, runs[0].info.run_name, shots / "experiment-runs.png")
    headers = {cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "[role='columnheader']")}
    wanted = {
        "task",
        "method",
        "beta",
        "seed",
        "utility",
        "Dataset",
        *(k for k in runs[0].data.metrics if k.startswith("forgetting_")),
    }
    assert wanted <= headers, wanted - headers
    for listed in runs:
        assert listed.info.run_name in text
    # Each run's Datasets cell names its training set (D+) with the digest of its `data.<name>` tag, then "+6".
    training = {(d.dataset.name, d.dataset.digest) for listed in runs for d in listed.inputs.dataset_inputs
                if [tag.value for tag in d.tags] == ["training"]}  # fmt: skip
    assert training == {("finetune_benign", runs[0].data.tags["data.finetune_benign"])}
    assert text.count("finetune_benign ({})".format(runs[0].data.tags["data.finetune_benign"])) == len(runs)
    assert len(runs) == 3


def _signed(value: float) -> str:
    text = f"{value:+.4f}"
    return "0.0000" if float(text) == 0 else text


def flow_workspace(tmp_path: Path, monkeypatch, params: dict, built: Path) -> tuple[Path, dict]:
    """A copy of the workspace `built` (its outputs and dvc.lock) with `params` in tmp_path/tiny.yaml, and its
    environment: only the stages that `params` change run again."""
    work = tmp_path / "repo"
    shutil.copytree(built, work, symlinks=True)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "SCLORA_"))]:
        monkeypatch.delenv(key)
    for name, value in (("OMP_NUM_THREADS", "1"), ("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        monkeypatch.setenv(name, value)
    return work, clean_env(tmp_path)


@pytest.mark.usefixtures("prefect_harness")
def test_pipeline_flow_on_the_real_dvc_yaml_with_tiny_params(tmp_path, monkeypatch, tiny_repro):
    # From the session's `dvc repro` of the same params and MLflow store: the override changes LoRA's run alone.
    repro = tiny_repro.work
    work, env = flow_workspace(tmp_path, monkeypatch, tiny_params(repro.parent), repro)

    # Two stages at a time: concurrent stage processes share DVC's lock, the MLflow store and the HF caches.
    override = "train.learning_rates.lora=3.0e-3"  # params.yaml has 2e-3: another rate, so LoRA trains again
    result = pipeline_flow(params_file=str(tmp_path / "tiny.yaml"), overrides=(override,), workdir=str(work), jobs=2)
    assert result["stages"] == ["testbed@testbed", "prepare", "capture", "solve@0.8", "forecast", "plan",
                                "evaluate_base", "train@benign-lora-0", "train@benign-pissa-0",
                                "train_sclora@benign-sclora-0.8-0", "register", "report"]  # fmt: skip
    with open(result["results"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["run"] for row in rows) == list(RUNS)
    run_json = json.loads((work / "artifacts/runs/benign-lora-0/run.json").read_text())
    assert run_json["lr"] == 3.0e-3  # the -S override reached the stage ...
    for name in RUNS[1:]:  # ... and DVC ran no other training
        assert (work / f"artifacts/runs/{name}/run.json").read_bytes() == (
            repro / f"artifacts/runs/{name}/run.json"
        ).read_bytes()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repro.parent / 'mlflow.db'}")
    child = client.get_run(run_json["mlflow_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == result["parent_run_id"]
    assert json.loads(run(["dvc", "status", "--json"], work, env).strip().splitlines()[-1]) == {}
    table = prefect_artifact("sclora-results")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert len(rows) == 3


@pytest.mark.usefixtures("prefect_harness")
def test_frontier_flow_on_the_real_dvc_yaml_trains_every_point_once_and_reports(tmp_path, monkeypatch, tiny_repro):
    """`make protocol`'s flow: two builds, two configurations, every rate, seed and checkpoint, then the report;
    none of the quick run's stages runs, and a second run trains nothing."""
    repro = tiny_repro.work
    params = tiny_params(repro.parent)
    params["frontier"].update(builds=[0, 1], seeds=[0, 1], configs=["lora", "sclora-0.8"], task="benign",
                              lrs=[1.0e-3, 4.0e-3], checkpoints=[0.5, 1.0], levels=[0.5], max_steps=None,
                              primary={"config": "sclora-0.8", "versus": "lora", "level": 0.5})  # fmt: skip
    work, env = flow_workspace(tmp_path, monkeypatch, params, repro)
    result = frontier_flow(params_file=str(tmp_path / "tiny.yaml"), workdir=str(work), jobs=2)
    items = [f"frontier@{b}-{c}" for b in (0, 1) for c in ("lora", "sclora-0.8")]
    assert sorted(result["stages"]) == sorted(["frontier_build@0", "frontier_build@1", *items])
    report = Path(result["report"])
    with open(report.parent / "points.csv", newline="") as handle:
        points = list(csv.DictReader(handle))
    assert len(points) == 2 * 2 * 2 * 2 * 2  # builds x configs x rates x seeds x checkpoints
    verdicts = json.loads((report.parent / "verdicts.json").read_text())
    assert verdicts["rule"]["builds"] == "block"
    text = report.read_text()
    for png in report.parent.glob("*.png"):
        assert f"({png.name})" in text
    assert prefect_artifact("sclora-frontier") is not None
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repro.parent / 'mlflow.db'}")
    logged = [f.path for f in client.list_artifacts(result["parent_run_id"], "frontier/report")]
    assert "frontier/report/report.md" in logged
    before = {item: (work / "artifacts/frontier/points" / f"build-{item[9:]}.json").read_bytes() for item in items}
    again = frontier_flow(params_file=str(tmp_path / "tiny.yaml"), workdir=str(work), jobs=2)
    assert again["stages"] == result["stages"]
    for item, data in before.items():  # DVC found every item up to date: nothing retrained
        assert (work / "artifacts/frontier/points" / f"build-{item[9:]}.json").read_bytes() == data


@pytest.mark.usefixtures("prefect_harness")
def test_select_beta_on_the_real_dvc_yaml_probes_registers_and_says_when_a_budget_is_unmet(
    tmp_path, monkeypatch, tiny_repro
):
    from flows.cli import main
    from flows.select_beta import select_beta
    from sclora.analysis.selection import first_beta
    from tasks.artifacts import load_forecast

    params = tiny_params(tmp_path)
    params["train"]["max_steps"] = 2
    params["data"]["finetune"]["poisoned"] = "finetune_poisoned"  # dropped by every round: probes train select.task
    params["select"].update(task="benign", seeds=[1, 2], confirm_seeds=[3, 4], max_runs=2,
                            forgetting_budget={"knowledge": 1.0})  # fmt: skip
    work, _ = flow_workspace(tmp_path, monkeypatch, params, tiny_repro.work)
    before = {path.name: (path / "run.json").read_bytes() for path in (work / "artifacts" / "runs").iterdir()}

    result = select_beta(params_file=str(tmp_path / "tiny.yaml"), workdir=str(work), jobs=2)
    probed = [probe["beta"] for probe in result["probes"]]
    # knowledge can drop by 1.0 at most: every probe is within the budget, so the search bisects downwards
    assert probed[0] == first_beta(load_forecast(work)["benign"]) and probed[1] == round(probed[0] / 2, 3)
    # ... and the chosen beta is trained again on the two confirmation seeds before it is registered
    assert result["chosen"] in probed and result["version"] == "1" and result["training_runs"] == 6
    assert [probe["seeds"] for probe in result["confirmation"]] == [2] and "confirmed on 2 fresh seeds" in result[
        "message"
    ]
    assert result["stopped"] == "max_runs (2 probes)"
    runs = {path.name: (path / "run.json").read_bytes() for path in (work / "artifacts" / "runs").iterdir()}
    trained = {f"benign-sclora-{b}-{s}" for b in probed for s in (1, 2)}
    trained |= {f"benign-sclora-{result['chosen']}-{s}" for s in (3, 4)}
    assert sorted(set(runs) - set(before)) == sorted(trained) and result["candidate"].endswith(("-3", "-4"))
    assert {name: runs[name] for name in before} == before  # sclora alone, probes only: the repro's runs stand
    assert yaml.safe_load((work / "params.yaml").read_text())["solve"]["betas"] == sorted(probed)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                 registry_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # fmt: skip
    version = client.get_model_version_by_alias("sclora-adapter", "candidate")
    assert str(version.version) == "1" and version.tags["select.beta"] == str(result["chosen"])
    assert json.loads(version.tags["select.budget"]) == {"knowledge": 1.0}
    assert "Beta for a forgetting budget (knowledge <= 1)" in version.description
    assert f"| 1 | {probed[0]:g} |" in version.description  # every probe, in the registry
    child = client.get_run(json.loads((work / f"artifacts/runs/{result['candidate']}/run.json").read_text())
                           ["mlflow_run_id"])  # fmt: skip
    assert child.data.tags["mlflow.parentRunId"] == result["parent_run_id"]
    assert "forecast.png" in (work / "artifacts/report/report.md").read_text()

    # A budget no beta meets (knowledge must rise by a whole point): nothing registered, one line, exit 1.
    code = main(["select-beta", "--workdir", str(work), "-S", "select.forgetting_budget={knowledge: -1.0}",
                 "-S", "select.max_runs=1"])  # fmt: skip
    assert code == 1
    selection = json.loads((work / "artifacts/select/selection.json").read_text())
    assert selection["version"] is None and selection["training_runs"] == 2
    assert selection["message"].startswith("the budget cannot be met: it asked knowledge <= -1")
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("sclora-adapter", "candidate")


def test_adding_a_seed_or_changing_one_rate_reruns_only_what_it_changes(pipeline):
    work, env, _ = pipeline
    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
    params["train"]["seeds"] = [0, 1]
    params["train"]["learning_rates"]["pissa"] = 3.0e-3
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    run(["dvc", "repro", "--single-item", "plan"], work, env)
    status = json.loads(run(["dvc", "status", "--json"], work, env).strip().splitlines()[-1])
    trained = {stage for stage in status if stage.startswith("train")}
    # The seed-0 runs of lora and sclora are up to date; pissa's rate changed; every seed-1 run is new.
    assert trained == {"train@benign-pissa-0", "train@benign-lora-1", "train@benign-pissa-1",
                       "train_sclora@benign-sclora-0.8-1"}, status  # fmt: skip
