"""The MLflow UI in a real (headless) browser, and optuna-dashboard over HTTP, on a real sweep.

Needs Debian's chromium + chromium-driver and the Python packages selenium and
optuna-dashboard (`.ci/run` installs them); skipped where they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meminject.cli import main
from servers import free_port, require, wait_http

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.slow  # servers, subprocesses or the real model: the full suite only

@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ui")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        args = ["sweep", "model=tiny", "model.device=cpu", "data.limit=8", "sweep=paper_grid", "study=ui", f"storage={folder / 'optuna.journal'}",
                f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", "injection.layer=choice(0, 2)", "injection.tweak=choice(2)", "memory.encoding=choice(unembed)"]
        assert main(args) == 0
    finally:
        os.chdir(cwd)
    return folder


def test_optuna_dashboard_serves_the_study(small_sweep):
    require(shutil.which("optuna-dashboard") is not None or (Path(sys.executable).parent / "optuna-dashboard").exists(), "optuna-dashboard (pip install -e '.[test]')")
    port = free_port()
    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")
    server = subprocess.Popen([exe, str(small_sweep / "optuna.journal"), "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        studies = json.loads(wait_http(f"http://127.0.0.1:{port}/api/studies"))
        summaries = studies.get("study_summaries", studies.get("studies"))
        assert summaries is not None, sorted(studies)
        assert [s["study_name"] for s in summaries] == ["ui"]
        assert [d.lower() for d in summaries[0]["directions"]] == ["maximize"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_mlflow_ui_lists_the_sweep_in_a_real_browser(small_sweep):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    require(bool(chromium and driver_path), "Debian chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    db = f"sqlite:///{small_sweep / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=db)
    experiment = client.get_experiment_by_name("meminject")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("meminject.role") == "sweep")
    trial = next(r for r in runs if r.data.tags.get("meminject.role") == "trial")

    port = free_port()
    mlflow_exe = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    server = subprocess.Popen([mlflow_exe, "server", "--backend-store-uri", db, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=small_sweep)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(flag)
    browser = None
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", timeout=120)
        browser = webdriver.Chrome(service=Service(driver_path), options=options)
        wait = WebDriverWait(browser, 45)

        def shows(text: str):
            return lambda b: text in b.find_element("tag name", "body").text

        def wait_for(text: str) -> None:
            try:
                wait.until(shows(text))
            except Exception:
                (ROOT / "test-artifacts").mkdir(exist_ok=True)
                browser.save_screenshot(str(ROOT / "test-artifacts" / "mlflow_failure.png"))
                raise AssertionError(f"{text!r} not shown; page text: {browser.find_element('tag name', 'body').text[:1500]!r}")

        browser.get(f"{base}/#/experiments/{experiment.experiment_id}/runs")
        wait_for("sweep ui")  # the parent run is listed
        shots = ROOT / "test-artifacts"
        shots.mkdir(exist_ok=True)
        browser.save_screenshot(str(shots / "mlflow_runs.png"))
        browser.get(f"{base}/#/experiments/{experiment.experiment_id}/runs/{trial.info.run_id}")
        wait_for("mean_gain")  # a trial run's page: its metric and params
        body = browser.find_element("tag name", "body").text
        assert "injection.layer" in body and trial.info.run_name in body
        browser.save_screenshot(str(shots / "mlflow_trial.png"))
        # a figure artifact of the sweep is reachable through the server
        png = wait_http(f"{base}/get-artifact?path=figures/gain_heatmap.png&run_uuid={parent.info.run_id}")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
