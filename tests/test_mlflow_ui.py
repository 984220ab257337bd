"""What a reviewer sees in MLflow's own UI after a tiny pipeline run, checked in a real headless browser.

A real `mlflow server` on 127.0.0.1 over a copy of the store of the session's `tiny_repro` (a `dvc repro` of the
real dvc.yaml), opened in Debian's Chromium through Selenium and Debian's chromedriver (.ci/run installs both;
Selenium is given both paths, so it never looks for a driver to download). Each page checked is saved as a PNG in
$SCLORA_UI_SHOTS, else in the test's temporary folder. Where no Chromium is installed the tests are skipped and
say so; under CI (CI=true) a missing browser fails them instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from infra_servers import BIN, HOST, Server, base_env, free_port, servers

from sclora.tracking import review_link, run_link

pytestmark = [pytest.mark.slow, pytest.mark.services]  # a whole pipeline (tiny_repro) and a real server
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
    run = client.get_run(version.run_id)
    return {"registry": registry, "version": version, "run": run}


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


def test_the_registered_version_shows_its_alias_and_the_comparison_table(ui, browser, registered, shots):
    from selenium.webdriver.common.by import By

    name, version, run = registered["registry"]["model"], registered["version"], registered["run"]
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
    assert link.text == run.info.run_name
    assert link.get_attribute("href") == f"{ui}/{run_link(run.info.experiment_id, run.info.run_id)}"
    assert f"Git commit: {run.data.tags['git_commit']}" in text
    hashes = {key.removeprefix("dvc."): value for key, value in run.data.tags.items() if key.startswith("dvc.")}
    assert hashes and all(f"{stage} {digest}" in text for stage, digest in hashes.items())


def test_the_description_links_the_source_run_which_names_each_dataset_and_its_role(ui, browser, registered, shots):
    from selenium.webdriver.common.by import By

    name, version, run = registered["registry"]["model"], registered["version"], registered["run"]
    open_page(browser, f"{ui}/#/models/{name}/versions/{version.version}", "base model", shots / "model-version.png")
    version_page = browser.current_window_handle
    browser.find_element(By.XPATH, SOURCE_RUN_LINK).click()  # MLflow opens a description's links in a new tab
    browser.switch_to.window(next(handle for handle in browser.window_handles if handle != version_page))
    try:
        _check_source_run(browser, run, shots)
    finally:
        browser.close()
        browser.switch_to.window(version_page)


def _check_source_run(browser, run, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    inputs = run.inputs.dataset_inputs
    # The page names the first input and folds the others into "+N", which opens the list of them all.
    folded = f"+{len(inputs) - 1}"
    shown(browser, folded, shots / "source-run.png")
    browser.find_element(By.XPATH, f"//*[text()='{folded}']").click()
    text = shown(browser, f"{inputs[-1].dataset.name} (", shots / "source-run.png")
    assert f"/runs/{run.info.run_id}" in browser.current_url and run.info.run_name in text
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
        value for key, value in run.data.tags.items() if key.startswith("data.")
    }  # the digests of the `data.<name>` tags


def test_the_experiment_review_view_lists_the_runs_with_their_datasets(ui, browser, registered, store, shots):
    from selenium.webdriver.common.by import By

    experiment_id = registered["run"].info.experiment_id
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([experiment_id], "tags.`sclora.config` LIKE '%'")
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
    for run in runs:
        assert run.info.run_name in text
    # Each run's Datasets cell names its training set (D+) with the digest of its `data.<name>` tag, then "+6".
    training = {(d.dataset.name, d.dataset.digest) for run in runs for d in run.inputs.dataset_inputs
                if [tag.value for tag in d.tags] == ["training"]}  # fmt: skip
    assert training == {("finetune_benign", runs[0].data.tags["data.finetune_benign"])}
    assert text.count("finetune_benign ({})".format(runs[0].data.tags["data.finetune_benign"])) == len(runs)
    assert len(runs) == 3


def _signed(value: float) -> str:
    text = f"{value:+.4f}"
    return "0.0000" if float(text) == 0 else text
