"""The MLflow UI in a real (headless) browser, and optuna-dashboard over HTTP, on a real sweep.

Needs Debian's chromium + chromium-driver and the Python packages selenium and
optuna-dashboard (`.ci/run` installs them); skipped where they are missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from conftest import start_cli
from meminject.cli import main
from servers import free_port, require, wait_http

ROOT = Path(__file__).resolve().parents[2]
# Screenshots for a person to look at (git-ignored): $MEMINJECT_TEST_ARTIFACTS or ./test-artifacts.
SHOTS = Path(os.environ.get("MEMINJECT_TEST_ARTIFACTS", ROOT / "test-artifacts"))


pytestmark = pytest.mark.slow  # servers, subprocesses or the real model: the full suite only


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ui")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        args = [
            "sweep",
            "model=tiny",
            "model.device=cpu",
            "data.limit=8",
            "sweep=paper_grid",
            "study=ui",
            f"storage={folder / 'optuna.journal'}",
            f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
            "injection.layer=choice(0, 2)",
            "injection.tweak=choice(2)",
            "memory.encoding=choice(unembed)",
        ]
        assert main(args) == 0
        # a second study on other prompts and another layer: it must never share the first one's ranked table
        other = [a for a in args if not a.startswith(("study=", "data.limit=", "injection.layer="))]
        assert main([*other, "study=other", "data.limit=6", "injection.layer=choice(1)"]) == 0
    finally:
        os.chdir(cwd)
    return folder


def test_optuna_dashboard_serves_the_study(small_sweep):
    require(
        shutil.which("optuna-dashboard") is not None or (Path(sys.executable).parent / "optuna-dashboard").exists(),
        "optuna-dashboard (pip install -e '.[test]')",
    )
    port = free_port()
    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")
    server = subprocess.Popen(
        [exe, str(small_sweep / "optuna.journal"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        studies = json.loads(wait_http(f"http://127.0.0.1:{port}/api/studies"))
        summaries = studies.get("study_summaries", studies.get("studies"))
        assert summaries is not None, sorted(studies)
        assert sorted(s["study_name"] for s in summaries) == ["other", "ui"]
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
    experiment = client.get_experiment_by_name("meminject/sweep/ui")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("meminject.role") == "sweep")
    trial = next(r for r in runs if r.data.tags.get("meminject.role") == "trial")

    port = free_port()
    mlflow_exe = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    server = subprocess.Popen(
        [mlflow_exe, "server", "--backend-store-uri", db, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=small_sweep,
    )
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
            except Exception as exc:  # noqa: BLE001 - any failure to show the text: screenshot, then fail
                (ROOT / "test-artifacts").mkdir(exist_ok=True)
                browser.save_screenshot(str(ROOT / "test-artifacts" / "mlflow_failure.png"))
                raise AssertionError(
                    f"{text!r} not shown; page text: {browser.find_element('tag name', 'body').text[:1500]!r}"
                ) from exc

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


@contextmanager
def meminject_ui(folder: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, str, list[str]]]:
    """``meminject ui [EXTRA]`` on the sweep's store, as a user starts it; yields the process, the URL
    it printed and the lines it printed so far. Always stopped with SIGINT (Ctrl-C)."""
    proc = start_cli("ui", "port=0", f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", *extra, cwd=folder)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        url = None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"meminject ui exited ({proc.wait()}): {''.join(lines)}")
            lines.append(line)
            found = re.search(r"(http://127\.0\.0\.1:\d+/#/experiments/\d+/runs\S*)", line)
            url = found.group(1) if found else None
        assert url, lines
        yield proc, url, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise


def test_meminject_ui_serves_the_runs_url_and_stops_on_ctrl_c(small_sweep):
    with meminject_ui(small_sweep) as (proc, url, lines):
        base = url.split("/#/")[0]
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read(2000).lower()
        server_pids = subprocess.run(
            ["pgrep", "-f", "--", f"--port {base.rsplit(':', 1)[1]}"], capture_output=True, text=True
        ).stdout.split()
        assert server_pids, "no MLflow server process"
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode in (0, 130)
    assert "Traceback" not in "".join(lines) + out and "stopped" in out
    time.sleep(1)
    assert not [pid for pid in server_pids if Path(f"/proc/{pid}").exists()], "the MLflow server outlived meminject ui"


def test_meminject_ui_bad_input_is_one_line(tmp_path):
    proc = start_cli("ui", "port=99999", cwd=tmp_path)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2 and out.strip().count("\n") == 0 and "port=99999" in out


def test_meminject_ui_in_a_real_browser(small_sweep):
    """The URL `meminject ui` prints opens on the runs table: trials named by site with their
    mean_gain; the parent's ranked-sites table artifact renders; the heatmap opens."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    require(bool(chromium and driver_path), "Debian chromium and chromium-driver (.ci/run installs them)")
    from mlflow.tracking import MlflowClient
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    client = MlflowClient(tracking_uri=f"sqlite:///{small_sweep / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("meminject/sweep/ui")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("meminject.role") == "sweep")
    trial = next(r for r in runs if r.data.tags.get("meminject.role") == "trial")
    assert trial.info.run_name.startswith("L") and "τ" in trial.info.run_name  # named by its site
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(flag)
    SHOTS.mkdir(parents=True, exist_ok=True)
    others = client.search_runs([client.get_experiment_by_name("meminject/sweep/other").experiment_id])
    other_trials = {r.info.run_name for r in others if r.data.tags.get("meminject.role") == "trial"}
    assert other_trials and not other_trials & {r.info.run_name for r in runs}  # told apart by their names
    with meminject_ui(small_sweep, "study=ui") as (_, url, lines):
        assert f"/experiments/{experiment.experiment_id}/runs" in url and "study ui" in "".join(lines)
        browser = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            wait = WebDriverWait(browser, 60)

            def wait_for(text: str, shot: str) -> None:
                try:
                    wait.until(lambda b: text in b.find_element("tag name", "body").text)
                finally:
                    browser.save_screenshot(str(SHOTS / shot))
                assert text in browser.find_element("tag name", "body").text, f"{text!r} not shown (see {SHOTS / shot})"

            browser.get(url)
            wait_for(trial.info.run_name, "ui_runs.png")  # the runs table, trials expanded under the sweep
            wait_for("mean_gain", "ui_runs.png")  # the saved view shows the objective column
            table = browser.find_element("tag name", "body").text
            # one study, one ranked table: the other study's parent and trials are not in it
            assert "sweep other" not in table and not [name for name in other_trials if name in table], table[:1500]
            base = url.split("/#/")[0]
            browser.get(
                f"{base}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}/artifacts/ranked_sites.json"
            )
            wait_for("encoding", "ui_ranked_sites.png")  # the table artifact renders: its columns ...
            wait_for("unembed", "ui_ranked_sites.png")  # ... and its cells
            # the heatmap, opened as a user does: the figures folder, then the file
            wait.until(lambda b: b.find_elements("xpath", "//*[text()='figures']"))[0].click()
            wait.until(lambda b: b.find_elements("xpath", "//*[text()='gain_heatmap.png']"))[0].click()
            try:
                wait.until(
                    lambda b: (
                        "figures/gain_heatmap.png" in b.find_element("tag name", "body").text
                        and any(
                            int(img.get_attribute("naturalWidth") or 0) >= 600
                            for img in b.find_elements("tag name", "img")
                        )
                    )
                )
            finally:
                browser.save_screenshot(str(SHOTS / "ui_heatmap.png"))
        finally:
            browser.quit()
