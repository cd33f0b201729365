"""``meminject ui``: the MLflow UI on this project's tracking store, opened on the runs table.

``mlflow ui`` alone opens MLflow 3 on its GenAI overview, 4-5 clicks from the runs, with
params and metrics hidden. This command starts the MLflow server on the store that
meminject writes (``tracking.uri``, by default ``./mlruns/mlflow.db``), bound to 127.0.0.1,
opens one study's experiment (``study=NAME``; each study has its own, so no table ranks two
datasets' gains together), marks it as model development (MLflow then opens it on its runs), saves a view
of the runs table (sorted by ``mean_gain``, the key params and metrics shown) in the
experiment, and prints the URL of that view; ``open=true`` opens it in a browser. Ctrl-C
stops the server and exits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from ..core._errors import ConfigError
from ..core._redaction import redact

__all__ = ["UI_SETTINGS", "cmd_ui", "runs_url", "server_command", "VIEW_KEY"]

UI_SETTINGS = {
    "port": "port on 127.0.0.1 (default 5000; 0 = any free port)",
    "open": "true: also open the URL in a browser (default false)",
    "study": "the study whose runs to show: each study has its own experiment, meminject/sweep/NAME (default: the study created last)",
    "experiment": "an MLflow experiment to show by name instead (e.g. meminject/eval, meminject/inspect)",
}
VIEW_KEY = "meminject-runs"  # the saved view of the runs table (an experiment tag MLflow's UI reads)
# Columns of the saved view: the objective and the site of each trial (MLflow's column keys).
VIEW_COLUMNS = [
    "metrics.`mean_gain`",
    "metrics.`mean_damage`",
    "metrics.`frac_improved`",
    "metrics.`mean_prob_after`",
    "metrics.`n_prompts`",
    "params.`dataset`",
    "params.`model`",
    "params.`injection.layer`",
    "params.`injection.tweak`",
    "params.`memory.encoding`",
    "params.`memory.type`",
    "params.`injection.site`",
]
STARTUP_S = 180.0  # a cold MLflow server (imports, store migration) on a busy 2-core machine


def _parse(args: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``port=``, ``open=``, ``experiment=``; every other key=value is a config override."""
    settings, overrides = {}, []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(
                f"{arg!r}: expected key=value (keys: {', '.join(UI_SETTINGS)}, or a config override such as tracking.uri=URL)"
            )
        (settings.__setitem__(key, value) if key in UI_SETTINGS else overrides.append(arg))
    return settings, overrides


def _bool(value: str, key: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ConfigError(f"{key}={value!r}: use true or false")


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"port={value} must be a port number from 0 to 65535 (0: any free port)")
    if port == 0:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigError(
                f"port={port} on 127.0.0.1 is in use ({exc.strerror}); pass another port=N, or port=0 for a free one"
            ) from exc
    return port


def _store(cfg: Any) -> str:
    """The tracking store to serve: a SQLite file that exists (a server URL is refused: it
    already has a UI)."""
    from ..tracking._retry import sqlite_path
    from ..tracking._tracker import tracking_uri

    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        raise ConfigError(
            f"tracking.uri={redact(uri)} is a tracking server: it serves its own UI; open {redact(uri)} in a browser"
        )
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise ConfigError(
            f"no MLflow store at {path}: run `meminject sweep` or `meminject eval` here first, or set tracking.uri=sqlite:///PATH"
        )
    return uri


def _chosen(client: Any, cfg: Any, settings: dict[str, str]) -> tuple[Any, str]:
    """The experiment to open, and a line saying which (``study=``, ``experiment=``, else the
    study created last, naming the others)."""
    from ..tracking._tracker import experiment_name, studies_prefix

    prefix = studies_prefix(cfg)
    experiments = client.search_experiments()
    studies = sorted(
        (e for e in experiments if e.name.startswith(prefix)),
        key=lambda e: e.creation_time or 0,
        reverse=True,
    )
    names = [e.name[len(prefix) :] for e in studies]
    if "study" in settings and "experiment" in settings:
        raise ConfigError("pass study=NAME or experiment=NAME, not both")
    if "experiment" in settings or ("study" not in settings and not studies):
        name = settings.get("experiment") or experiment_name(cfg, command="eval")
        found = next((e for e in experiments if e.name == name), None)
        if found is None:
            raise ConfigError(
                f"experiment={name!r} is not in this store (experiments: {', '.join(e.name for e in experiments) or 'none'}); "
                "pass experiment=NAME"
            )
        return found, f"experiment {name}"
    if "study" in settings:
        if settings["study"] not in names:
            raise ConfigError(
                f"study={settings['study']!r} has no runs in this store (studies: {', '.join(names) or 'none'}); pass study=NAME"
            )
        index = names.index(settings["study"])
        return studies[index], f"study {names[index]}"
    others = f" (other studies: {', '.join(names[1:])}; pass study=NAME)" if len(names) > 1 else ""
    return studies[0], f"study {names[0]}{others}"


def _experiment(uri: str, cfg: Any, settings: dict[str, str]) -> tuple[str, str]:
    """The chosen experiment's id and what it is; marks it as model development and saves the
    runs-table view."""
    from mlflow.tracking import MlflowClient

    from ..tracking._tracker import EXPERIMENT_KIND

    client = MlflowClient(tracking_uri=uri)
    experiment, what = _chosen(client, cfg, settings)
    if experiment.tags.get(EXPERIMENT_KIND[0]) is None:
        client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
    client.set_experiment_tag(
        experiment.experiment_id,
        f"mlflow.sharedViewState.{VIEW_KEY}",
        json.dumps(_view_state(client, experiment.experiment_id)),
    )
    return experiment.experiment_id, what


def _view_state(client: Any, experiment_id: str) -> dict[str, Any]:
    """The runs table as worth seeing first: best mean_gain on top, the sweeps expanded, the
    site and objective columns shown (MLflow's shared-view format: search facets + UI state)."""
    sweeps = client.search_runs([experiment_id], filter_string="tags.`meminject.role` = 'sweep'", max_results=200)
    return {
        "searchFilter": "",
        "orderByKey": "metrics.`mean_gain`",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": VIEW_COLUMNS,
        "runsExpanded": {r.info.run_id: True for r in sweeps},
    }


def runs_url(base: str, experiment_id: str, view: bool = True) -> str:
    """The experiment's runs table (MLflow 3's route), with the saved view."""
    return f"{base}/#/experiments/{experiment_id}/runs" + (f"?viewStateShareKey={VIEW_KEY}" if view else "")


def _server(uri: str, port: int, log_path: Path) -> subprocess.Popen:
    command, env = server_command(uri, port)
    with open(log_path, "ab") as log:
        # its own session: the terminal's Ctrl-C reaches meminject only, which stops the server cleanly
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **env},
        )


def server_command(uri: str, port: int) -> tuple[list[str], dict[str, str]]:
    """``mlflow server``'s argv and the environment it adds: the store URL (which may hold a
    password) goes in MLflow's own variables, never on the command line, where ``ps`` shows it."""
    from ..tracking._tracker import _artifact_root

    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    return command, {"MLFLOW_BACKEND_STORE_URI": uri, "MLFLOW_ARTIFACTS_DESTINATION": _artifact_root(uri)}


def _wait_ready(server: subprocess.Popen, base: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()][-1:] or [
                "(no output)"
            ]
            raise ConfigError(
                f"the MLflow server exited with status {server.returncode}: {tail[0][:300]} (log: {log_path})"
            )
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5):
                return
        except OSError:
            time.sleep(0.3)
    raise ConfigError(f"the MLflow server did not answer {base}/health within {STARTUP_S:.0f} s (log: {log_path})")


def _stop(server: subprocess.Popen) -> None:
    """Terminate the server's whole process group (MLflow runs uvicorn workers under it)."""
    if server.poll() is not None:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    except ProcessLookupError:
        pass


def cmd_ui(args: Sequence[str]) -> int:
    from ..config import load_run_config
    from ..tracking._probe import probe_database
    from ..tracking._retry import sqlite_path

    settings, overrides = _parse(args)
    opening = _bool(settings.get("open", "false"), "open")
    port = _port(settings.get("port", "5000"))
    cfg = load_run_config(overrides)  # unknown keys are refused by name
    uri = _store(cfg)
    if "study" in settings:
        from ..search._keys import check_study_name

        check_study_name(settings["study"])
    probe_database(uri)  # a wrong password: one line in seconds, not MLflow's ~100 s of retries
    experiment_id, what = _experiment(uri, cfg, settings)
    base = f"http://127.0.0.1:{port}"
    db = sqlite_path(uri)
    log_path = (db.parent if db is not None else Path.cwd()) / "ui.log"
    server = _server(uri, port, log_path)
    try:
        _wait_ready(server, base, log_path)
        url = runs_url(base, experiment_id)
        print(f"MLflow UI on {redact(uri)}, {what}: {url}", flush=True)
        print("  (Ctrl-C stops it; server log: " + str(log_path) + ")", flush=True)
        if opening:
            import webbrowser

            webbrowser.open(url)
        while server.poll() is None:
            time.sleep(0.5)
        raise ConfigError(f"the MLflow server stopped by itself (status {server.returncode}; log: {log_path})")
    except KeyboardInterrupt:
        from ..core._interrupts import held

        with held():
            _stop(server)
        print("meminject ui: stopped", file=sys.stderr, flush=True)
        return 130
    finally:
        _stop(server)
