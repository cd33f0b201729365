"""Ctrl-C from the first instant, a refused database login, and secrets out of ``ps`` (issue #26).

Each test starts real ``python -m meminject`` processes (tiny model), so all are slow-marked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import TINY, run_cli, start_cli, without_stages
from servers import postgres_bin, postgres_cluster, require

PASSWORD = "right-Pw-26"
WRONG = "wrong-Pw-26"
INTERRUPTED = "meminject: interrupted"


def _handler_in_place(pid: int) -> bool:
    """meminject's handler is installed: the process catches SIGTERM (Python alone does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def _interrupt(
    tmp_path: Path, delay: float, workers: int, from_handler: bool, writer: str = "inline"
) -> tuple[int, str]:
    """A sweep started in its own session, Ctrl-C'd (SIGINT to its process group, as a terminal
    does) ``delay`` s after its start, or after meminject's handler is in place
    (``from_handler``); returns (status, stderr). Python's own start-up (its ``site``, ~0.1 s,
    before any meminject code runs) is outside meminject's reach: the delays from the start
    leave it room."""
    args = [
        "sweep",
        *TINY,
        f"workers={workers}",
        "n_trials=6",
        "sampler=random",
        f"storage={tmp_path / 'optuna.journal'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "progress=false",
        f"tracking.writer={writer}",
    ]
    started = time.monotonic()
    proc = start_cli(*args, cwd=tmp_path, stderr=subprocess.PIPE, start_new_session=True)
    if from_handler:
        deadline = time.monotonic() + 30
        while not _handler_in_place(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        started = time.monotonic()
    time.sleep(max(0.0, started + delay - time.monotonic()))
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    return proc.returncode, err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("delay", "workers", "from_handler", "writer"),
    [
        (0.0, 1, True, "inline"),
        (0.5, 1, False, "inline"),
        (1.0, 1, False, "inline"),
        (3.0, 2, False, "inline"),
        (5.0, 2, False, "inline"),
        (7.0, 2, False, "inline"),
        (3.0, 1, False, "process"),  # the writer process still importing, or writing
        (6.0, 2, False, "process"),
    ],
    ids=["first-instant", "imports-0.5s", "imports-1s", "w2-3s", "w2-5s", "w2-7s", "writer-3s", "writer-w2-6s"],
)
def test_ctrl_c_at_any_moment_exits_130_with_one_line(tmp_path, delay, workers, from_handler, writer):
    code, err = _interrupt(tmp_path, delay, workers, from_handler, writer)
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    # one line, beside the stage lines of the steps that ran (a worker that got to its model
    # load said so: "loading model tiny … …"), as for bad input
    lines = without_stages(lines)
    assert code == 130 and len(lines) == 1 and lines[0].startswith(INTERRUPTED), (code, err[-3000:])


@pytest.mark.slow
def test_a_wrong_password_on_a_postgres_mlflow_store_is_one_line_in_seconds(tmp_path):
    require(postgres_bin() is not None, "PostgreSQL (initdb, pg_ctl)")
    with postgres_cluster(PASSWORD, ("mlflow",)) as auth:
        uri = f"postgresql+psycopg2://{auth.replace(PASSWORD, WRONG)}/mlflow"
        for command in (["sweep", *TINY, f"storage={tmp_path / 'optuna.journal'}"], ["ui", "port=0"]):
            started = time.monotonic()
            proc = run_cli(*command, f"tracking.uri={uri}", cwd=tmp_path, timeout=120)
            elapsed = time.monotonic() - started
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
            assert "password authentication failed" in lines[0] and WRONG not in proc.stdout + proc.stderr
            assert elapsed < 60, f"{command[0]} took {elapsed:.0f} s"  # MLflow's retries alone took ~100 s
        assert not (tmp_path / "optuna.journal").exists()


@pytest.mark.slow
def test_spawned_workers_show_no_password_in_ps(tmp_path):
    """While a 2-worker sweep runs on a PostgreSQL study, no process's argv holds the password."""
    require(postgres_bin() is not None, "PostgreSQL (initdb, pg_ctl)")
    with postgres_cluster(PASSWORD, ("optuna",)) as auth:
        storage = f"postgresql+psycopg2://{auth}/optuna"
        args = ["sweep", *TINY, "workers=2", "n_trials=4", "sampler=random", f"storage={storage}", "progress=false"]
        args += ["tracking.enabled=false"]
        proc = start_cli(*args, cwd=tmp_path, stderr=subprocess.PIPE)
        seen: set[int] = set()
        try:
            while proc.poll() is None:
                for child in _descendants(proc.pid):
                    seen.add(child)
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes() if Path(f"/proc/{child}").exists() else b""
                    assert PASSWORD.encode() not in cmdline, cmdline
                time.sleep(0.2)
        finally:
            out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert len(seen) >= 2  # the workers were seen while they ran
        assert PASSWORD not in out + err


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(c) for c in children] + [d for c in children for d in _descendants(int(c))]


@pytest.mark.slow
def test_a_two_worker_sweep_on_a_tracking_server_with_a_password_and_a_worker_resuming_from_the_environment(tmp_path):
    """The coordinator hands the tracking URL to its workers in the environment; the study keeps
    it redacted, so a worker started later needs MLFLOW_TRACKING_URI (one line says so)."""
    from conftest import env, mlflow_runs
    from servers import mlflow_server

    with mlflow_server(tmp_path) as port:
        uri = f"http://meminject:{PASSWORD}@127.0.0.1:{port}"
        storage = f"storage={tmp_path / 'optuna.journal'}"
        args = ["sweep", *TINY, "workers=2", "n_trials=2", "sampler=random", "study=pw", storage, "progress=false"]
        proc = run_cli(*args, f"tracking.uri={uri}", cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert PASSWORD not in proc.stdout + proc.stderr
        assert PASSWORD.encode() not in (tmp_path / "optuna.journal").read_bytes()
        assert len(mlflow_runs(f"http://127.0.0.1:{port}", role="trial")) == 2  # the workers reached the server

        worker = ["worker", "study=pw", storage, "progress=false"]
        refused = run_cli(*worker, cwd=tmp_path, timeout=300)
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert refused.returncode == 2 and len(lines) == 1 and "export MLFLOW_TRACKING_URI=" in lines[0], refused.stderr
        resumed = run_cli(*worker, cwd=tmp_path, env=env(MLFLOW_TRACKING_URI=uri), timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
