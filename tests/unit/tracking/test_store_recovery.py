"""Stores that recover: errors that waiting never fixes (a full disk, a schema conflict, a
failed login, a missing run) fail at once in one line with the way out, and a half-created
SQLite ``mlflow.db`` (its migrations stopped part-way) is moved aside, kept, and created again."""

from __future__ import annotations

import errno
import logging
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from meminject.core._errors import TrackingError


class NoWaitClock:
    """The retry loop's clock: records each wait, never sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _permanent_errors() -> list[tuple[str, BaseException, str]]:
    """(case, the error as the store raises it, a word of its way out)."""
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

    full = sqlite3.OperationalError("database or disk is full")
    return [
        ("disk-full-sqlalchemy", sqlalchemy.exc.OperationalError("INSERT", {}, full), "free space"),
        (
            "disk-full-mlflow",  # MLflow wraps every OperationalError as TEMPORARILY_UNAVAILABLE
            MlflowException("(sqlite3.OperationalError) database or disk is full", error_code=TEMPORARILY_UNAVAILABLE),
            "free space",
        ),
        ("enospc", OSError(errno.ENOSPC, "No space left on device"), "free space"),
        (
            "table-exists",
            sqlalchemy.exc.OperationalError(
                "CREATE TABLE secrets", {}, sqlite3.OperationalError("table secrets already exists")
            ),
            "move the store aside",
        ),
        (
            "out-of-date-schema",
            MlflowException(
                "Detected out-of-date database schema (found version bf29a5ff90ea, but expected dc11669786a5)."
            ),
            "mlflow db upgrade",
        ),
        (
            "password",
            sqlalchemy.exc.OperationalError(
                "connect", {}, Exception('FATAL:  password authentication failed for user "meminject"')
            ),
            "password",
        ),
        (
            "http-401",
            MlflowException("API request to endpoint /api/2.0/mlflow/runs/create failed with error code 401 != 200"),
            "password",
        ),
        (
            "missing-run",
            MlflowException("Run with id=0123abcd not found", error_code=RESOURCE_DOES_NOT_EXIST),
            "tracking.uri",
        ),
    ]


@pytest.mark.parametrize("case", range(8), ids=[c for c, _, _ in _permanent_errors()])
def test_a_permanent_store_error_is_one_line_at_once_with_the_way_out(case: int) -> None:
    # Before: disk full, "table ... already exists", a refused login (wrapped by SQLAlchemy) were
    # retried for tracking.retry_s (60 s); the others raised MLflow's own exception (a traceback).
    from meminject.tracking._retry import is_transient, retrying

    _, error, way = _permanent_errors()[case]
    calls = []

    def broken() -> None:
        calls.append(1)
        raise error

    clock = NoWaitClock()
    with pytest.raises(TrackingError) as caught:
        retrying(broken, "create_run", "postgresql://u:hunter2@db/mlflow", retry_s=60, clock=clock)
    assert len(calls) == 1 and clock.sleeps == [] and not is_transient(error)
    message = str(caught.value)
    assert "\n" not in message and way in message and "hunter2" not in message, message
    assert "retry_s" not in message  # not "still failing after": it was never retried


def test_a_locked_store_is_still_retried() -> None:
    from meminject.tracking._retry import retrying

    pending = [sqlite3.OperationalError("database is locked")] * 3

    def flaky() -> str:
        if pending:
            raise pending.pop()
        return "done"

    clock = NoWaitClock()
    assert retrying(flaky, "create_run", "sqlite:////tmp/x.db", retry_s=60, clock=clock) == "done"
    assert len(clock.sleeps) == 3


@pytest.fixture(scope="module")
def full_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete, empty MLflow SQLite store, made once in another process (migrations take seconds)."""
    db = tmp_path_factory.mktemp("made") / "mlflow.db"
    code = f"from mlflow.tracking import MlflowClient; MlflowClient(tracking_uri='sqlite:///{db}')"
    made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    return db


def _half_created(full_store: Path, db: Path, how: str) -> bytes:
    """A copy of the store at ``db`` as migrations stopped part-way leave it; its bytes."""
    shutil.copyfile(full_store, db)
    connection = sqlite3.connect(db)
    (head,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    earlier = _revision_before(head, steps=3)
    connection.execute("UPDATE alembic_version SET version_num = ?", (earlier,))
    if how == "tables-missing":  # the later migrations' tables not created: MLflow migrates again, into existing tables
        connection.execute("DROP TABLE jobs")
    if how == "with-a-run":
        connection.execute(
            "INSERT INTO runs (run_uuid, name, experiment_id, status, lifecycle_stage) VALUES ('r1', 'r', 0, 'FINISHED', 'active')"
        )
    connection.commit()
    connection.close()
    return db.read_bytes()


def _version(db: Path) -> str:
    connection = sqlite3.connect(db)
    try:
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    finally:
        connection.close()


def _version_of(data: bytes, folder: Path) -> str:
    copy = folder / "copy-of-the-broken.db"
    copy.write_bytes(data)
    return _version(copy)


def _revision_before(head: str, steps: int) -> str:
    """The schema revision ``steps`` migrations before ``head``, from MLflow's own scripts."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
    revision = head
    for _ in range(steps):
        revision = script.get_revision(revision).down_revision
    return revision


@pytest.mark.parametrize("how", ["tables-missing", "version-behind"])
def test_a_half_created_store_is_moved_aside_and_created_again(
    tmp_path: Path, full_store: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: "table secrets already exists (still failing after tracking.retry_s=60 s)", or
    # "MlflowException: Detected out-of-date database schema" as a traceback, on every command.
    from meminject.tracking._retry import open_client

    db = tmp_path / "mlflow.db"
    broken = _half_created(full_store, db, how)
    with caplog.at_level(logging.WARNING, logger="meminject"):
        client = open_client(f"sqlite:///{db}", retry_s=60, clock=NoWaitClock())
    (aside,) = tmp_path.glob("mlflow.db.broken-*[0-9Z]")
    assert _version(aside) == _version_of(broken, tmp_path)  # kept (MLflow's failed try may touch its pages)
    notes = [r.getMessage() for r in caplog.records if r.name == "meminject"]
    assert len(notes) == 1 and "half-created" in notes[0] and str(aside) in notes[0], notes
    experiment = client.create_experiment("after")
    assert client.get_experiment(experiment).name == "after"  # a working store again, at the same path
    assert db.exists() and db.read_bytes() != broken


def test_a_store_with_runs_is_never_moved_but_says_how(tmp_path: Path, full_store: Path) -> None:
    from meminject.tracking._retry import open_client

    db = tmp_path / "mlflow.db"
    broken = _half_created(full_store, db, "with-a-run")
    with pytest.raises(TrackingError) as caught:
        open_client(f"sqlite:///{db}", retry_s=60, clock=NoWaitClock())
    message = str(caught.value)
    assert "\n" not in message and "holds runs" in message and "mlflow db upgrade" in message and "mv " in message
    assert _version(db) == _version_of(broken, tmp_path) and not list(tmp_path.glob("mlflow.db.broken-*"))
    connection = sqlite3.connect(db)
    assert connection.execute("SELECT run_uuid FROM runs").fetchall() == [("r1",)]  # left where it was
    connection.close()


def test_a_store_that_fills_during_a_sweep_is_one_line_at_once(tmp_path: Path, monkeypatch, capsys) -> None:
    # Before: a full disk was retried for tracking.retry_s (60 s) at each call, and a sweep on a
    # store filling up printed 2,017 lines with 123 tracebacks.
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
    from mlflow.tracking import MlflowClient

    from conftest import load, sweep_args, without_stages
    from meminject.cli import main

    monkeypatch.chdir(tmp_path)
    real = MlflowClient.log_batch
    calls = []

    def filling(self, *args, **kwargs):  # the parent run's params fit; then the disk is full
        calls.append(1)
        if len(calls) > 2:
            raise MlflowException(
                "(sqlite3.OperationalError) database or disk is full", error_code=TEMPORARILY_UNAVAILABLE
            )
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", filling)
    code = main([*sweep_args(tmp_path, "sweep=smoke", "study=fill", "n_trials=4"), "progress=false"])
    err = without_stages([line for line in capsys.readouterr().err.splitlines() if line.strip()])
    assert code == 2 and len(calls) == 3, (code, len(calls))  # the failing call was not retried
    assert len(err) == 1 and "disk is full" in err[0] and "free space" in err[0], err
    done = load(tmp_path, "fill").get_trials(deepcopy=False)
    assert any(t.state.name == "COMPLETE" for t in done)  # the computed trial is kept in the study
