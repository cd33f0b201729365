"""Credentials never printed or saved, and a tracking store that is briefly locked, busy or
created by several workers at once does not kill them; what cannot work fails in one line."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import mlflow_server

from meminject.core._errors import MemInjectError

SECRET = "hunter2"


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql+psycopg2://:hunter2@host:5432/db", "postgresql+psycopg2://:***@host:5432/db"),
        ("http://:hunter2@127.0.0.1:5000", "http://:***@127.0.0.1:5000"),
        ("http://u:hunter2@127.0.0.1:5000", "http://u:***@127.0.0.1:5000"),
        ("postgresql://u:hunter2@host/db?sslmode=require", "postgresql://u:***@host/db?sslmode=require"),
        ("postgresql://u:p@ss@word@host/db", "postgresql://u:***@host/db"),  # userinfo ends at the last "@"
        (
            "postgresql://host/db?user=u&password=hunter2&sslmode=require",
            "postgresql://host/db?user=u&password=***&sslmode=require",
        ),
        ("http://h/x?PASSWD=hunter2&pwd=hunter2&Secret=hunter2", "http://h/x?PASSWD=***&pwd=***&Secret=***"),
        (
            "http://h/x?token=hunter2&api_key=hunter2&access_token=hunter2",
            "http://h/x?token=***&api_key=***&access_token=***",
        ),
        ("tracking.uri=http://u:hunter2@host", "tracking.uri=http://u:***@host"),
        (
            "cannot open postgresql://a:hunter2@h:1/o (or http://b:hunter2@h:2/x), giving up",
            "cannot open postgresql://a:***@h:1/o (or http://b:***@h:2/x), giving up",
        ),
        ("storage=postgresql://a:hunter2@h/o,http://b:hunter2@h", "storage=postgresql://a:***@h/o,http://b:***@h"),
    ],
)
def test_redact_hides_every_password(text, expected):
    from meminject.tracking._tracker import redact

    assert redact(text) == expected
    assert SECRET not in redact(text) and "ss@word" not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "sqlite:////tmp/mlruns/mlflow.db",
        "/tmp/optuna.journal",
        "http://127.0.0.1:5000",
        "http://user@host:5000/x",
        "no URL: a:b@c",
        "http://h/?tokenizer=gpt2",
        "https://example.org/@someone",
    ],
)
def test_redact_leaves_text_without_secrets_alone(text):
    from meminject.tracking._tracker import redact

    assert redact(text) == text
    assert redact(None) is None


def test_redacted_config_hides_every_url_with_credentials():
    from omegaconf import OmegaConf

    from meminject.tracking._tracker import redacted_config

    cfg = OmegaConf.create(
        {
            "tracking": {"uri": "http://:hunter2@127.0.0.1:5000", "experiment": "meminject"},
            "storage": "postgresql+psycopg2://meminject:hunter2@db:5432/optuna",
            "overrides": ["tracking.uri=http://u:hunter2@h", "injection.layer=3"],
            "nested": {"dsn": "postgresql://h/db?password=hunter2", "n": 3},
        }
    )
    shown = redacted_config(cfg)
    assert SECRET not in OmegaConf.to_yaml(shown)
    assert (
        shown.tracking.uri == "http://:***@127.0.0.1:5000"
        and shown.storage == "postgresql+psycopg2://meminject:***@db:5432/optuna"
    )
    assert (
        shown.overrides[1] == "injection.layer=3" and shown.nested.n == 3 and shown.tracking.experiment == "meminject"
    )
    assert SECRET in cfg.storage  # a copy: the config in use keeps its password
    from meminject.core._redaction import redacted_container

    assert redacted_container(cfg) == OmegaConf.to_container(shown)  # what trial runs are logged from


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model=smollm2-135m", "data=2wikimultihop", "data.split=0.7"],
        ["model=tiny", "memory.type=pos", "metric.damage=kl"],
    ],
)
def test_to_yaml_writes_what_omegaconf_writes(overrides):
    """The fast YAML writer of every trial's config.yaml: text for text OmegaConf's, also for
    strings a YAML reader would take for something else (quoted) and non-ASCII text."""
    from omegaconf import OmegaConf

    from meminject.config import compose_config, to_yaml

    cfg = compose_config(overrides)
    assert to_yaml(cfg) == OmegaConf.to_yaml(cfg, resolve=True)
    tricky = OmegaConf.create(
        {
            "a": "1e-5",
            "b": "true",
            "c": "no",
            "d": "007",
            "e": "τ=4 · “memory”",
            "f": None,
            "g": [1, 2.5, "x: y"],
            "h": {"i": "null", "j": ""},
            "k": "0x1F",
            "l": "3.0",
        }
    )
    assert to_yaml(tricky) == OmegaConf.to_yaml(tricky, resolve=True)
    assert to_yaml(OmegaConf.to_container(tricky)) == OmegaConf.to_yaml(tricky)


def test_retry_setting_is_in_the_config():
    from meminject.config import load_run_config as compose_config
    from meminject.tracking._tracker import retry_seconds

    assert compose_config([]).tracking.retry_s == 60
    assert retry_seconds(compose_config(["tracking.retry_s=2.5"])) == 2.5
    with pytest.raises(MemInjectError, match="tracking.retry_s"):
        retry_seconds(compose_config(["tracking.retry_s=-1"]))


# --------------------------------------------------------------------------- retries


class FakeClock:
    """The retry loop's clock here (``retrying(clock=)``, or patched in as ``_retry.CLOCK``): time
    moves only when the loop sleeps, in nanosecond ticks, so a lock held "for 6.5 s" takes no
    real time; ``at(t, action)`` runs ``action`` once when the fake time reaches ``t``."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._due: list[tuple[float, Callable[[], object]]] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        self.sleeps.append(seconds)
        self.now = round(self.now + seconds, 9)
        for due in [d for d in self._due if d[0] <= self.now]:
            self._due.remove(due)
            due[1]()

    def at(self, when: float, action: Callable[[], object]) -> None:
        self._due.append((when, action))


def test_transient_errors_are_retried_and_others_raise_at_once():
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, TEMPORARILY_UNAVAILABLE

    from meminject.tracking._retry import retrying

    transient = [
        sqlite3.OperationalError("database is locked"),
        sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked")),
        MlflowException("(sqlite3.OperationalError) database is locked", error_code=TEMPORARILY_UNAVAILABLE),
        MlflowException("API request to endpoint /api/2.0/mlflow/runs/create failed with error code 503 != 200"),
        requests.ConnectionError("Connection refused"),
        ConnectionResetError("reset by peer"),
    ]
    pending = list(transient)

    def flaky() -> str:
        if pending:
            raise pending.pop(0)
        return "done"

    clock = FakeClock()
    assert retrying(flaky, "create_run", "sqlite:////tmp/x.db", retry_s=30, clock=clock) == "done" and not pending
    # one wait after each of the 6 failures: 50 ms doubling, each jittered down to no less than half
    assert len(clock.sleeps) == len(transient)
    assert all(0.5 * 0.05 * 2**i <= wait <= 0.05 * 2**i for i, wait in enumerate(clock.sleeps)), clock.sleeps

    for permanent in (
        MlflowException("Experiment 'x' already exists.", error_code=RESOURCE_ALREADY_EXISTS),
        ValueError("bad"),
    ):  # (a missing table, a full disk: one line with the way out, tests/unit/tracking/test_store_recovery.py)
        calls = []

        def broken(error=permanent) -> None:
            calls.append(1)
            raise error

        clock = FakeClock()
        with pytest.raises(type(permanent)):
            retrying(broken, "create_run", "sqlite:////tmp/x.db", retry_s=30, clock=clock)
        assert len(calls) == 1 and clock.sleeps == []


def test_a_store_that_stays_down_fails_in_one_redacted_line():
    from mlflow.exceptions import MlflowException

    from meminject.tracking._retry import retrying
    from meminject.core._errors import TrackingError

    uri = f"http://meminject:{SECRET}@127.0.0.1:1"

    def down() -> None:  # what MLflow's REST client raises, the URI's password included
        raise MlflowException(
            f"API request to {uri}/api/2.0/mlflow/runs/create failed with exception HTTPConnectionPool: Max retries exceeded\n(Caused by ...)"
        )

    calls = []
    clock = FakeClock()
    with pytest.raises(TrackingError) as caught:
        retrying(lambda: calls.append(1) or down(), "create_run", uri, retry_s=0.4, clock=clock)
    # waits of 25-50, 50-100, 100-200 ms, then 200-400 ms cut to the 0.4 s left: 4 or 5 waits,
    # the last one ending on the deadline, and one call after each
    assert clock.now == 0.4 and 4 <= len(clock.sleeps) <= 5 and len(calls) == len(clock.sleeps) + 1
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message and "Traceback" not in message
    assert "create_run" in message and "http://meminject:***@127.0.0.1:1" in message and "tracking.retry_s" in message


@pytest.fixture(scope="module")
def made_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, made once by another process (its migrations take seconds)."""
    db = tmp_path_factory.mktemp("made") / "mlflow.db"
    made = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from mlflow.tracking import MlflowClient; MlflowClient(tracking_uri='sqlite:///{db}')",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    return db


def _locked(made_store: Path, db: Path) -> sqlite3.Connection:
    """A copy of the made store at ``db`` (this process has no cached engine for it), and a
    connection holding an exclusive lock on it until its ``COMMIT``."""
    shutil.copyfile(made_store, db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


# sqlite3 gives up on a lock after this (the URI's own timeout is kept): each attempt fails at
# once and the waiting is the retry loop's, on the fake clock
_NO_SQLITE_WAIT = "?timeout=0.01"


@pytest.mark.slow  # starts processes (a fresh MLflow store's migrations take seconds each)
def test_workers_wait_for_a_locked_sqlite_store(tmp_path, monkeypatch, made_store):
    """Locked longer than sqlite3's 5 s default while the store opens: MLflow's table check
    used to fail with "database is locked"; now it waits, and the run is recorded."""
    import mlflow.tracking  # noqa: F401 - imported before the lock: the store opens at once, well inside the lock

    from meminject.tracking import _retry
    from meminject.tracking._tracker import Tracker

    db = tmp_path / "mlflow.db"
    # a real store URI waits inside sqlite3 too, for up to tracking.retry_s
    assert _retry._store_uri(f"sqlite:///{db}", 60) == f"sqlite:///{db}?timeout=60"
    holder = _locked(made_store, db)
    clock = FakeClock()
    clock.at(6.5, lambda: (holder.execute("COMMIT"), holder.close()))
    monkeypatch.setattr(_retry, "CLOCK", clock)
    tracker = Tracker(f"sqlite:///{db}{_NO_SQLITE_WAIT}", "locked")
    # opened on the first attempt after the release, 6.5 s in: waits of 25-50 ms doubling to 1-2 s
    # add up to 6.5 s after 8 to 11 of them, and the last (2 s at most) ends past it
    assert 6.5 <= clock.now < 6.5 + 2.0 and 8 <= len(clock.sleeps) <= 11, clock.sleeps
    waited = len(clock.sleeps)
    run_id = tracker.start_parent("s", {"a": 1}, {})
    tracker.finish_trial(run_id, {"b": 2}, {"mean_gain": 0.5}, {"note.txt": "x"})
    run = tracker.client.get_run(run_id)
    assert (
        run.info.status == "FINISHED"
        and run.data.metrics["mean_gain"] == 0.5
        and run.data.params == {"a": "1", "b": "2"}
    )
    assert len(clock.sleeps) == waited, "no waiting once the lock is gone"


@pytest.mark.slow  # starts processes (a fresh MLflow store's migrations take seconds each)
def test_a_lock_held_past_retry_s_fails_in_one_line(tmp_path, monkeypatch, made_store):
    from meminject.core._errors import TrackingError
    from meminject.tracking import _retry
    from meminject.tracking._tracker import Tracker

    db = tmp_path / "mlflow.db"
    holder = _locked(made_store, db)
    clock = FakeClock()
    monkeypatch.setattr(_retry, "CLOCK", clock)
    try:
        with pytest.raises(TrackingError) as caught:
            Tracker(f"sqlite:///{db}{_NO_SQLITE_WAIT}", "locked", retry_s=0.5)
    finally:
        holder.execute("COMMIT")
        holder.close()
    # gave up on the deadline: waits of 25-50, 50-100, 100-200, 200-400 ms, the one that would
    # pass 0.5 s cut to end on it (4 or 5 waits, one more attempt after each)
    assert clock.now == 0.5 and 4 <= len(clock.sleeps) <= 5, clock.sleeps
    message = str(caught.value)
    assert (
        "\n" not in message
        and "database is locked" in message
        and f"sqlite:///{db}" in message
        and "tracking.retry_s" in message
    )


def _create_at_once(uri: str, barrier, results) -> None:
    from meminject.tracking._tracker import Tracker

    try:
        barrier.wait(60)
        tracker = Tracker(uri, "together")
        results.put(("ok", tracker.experiment_id, tracker.start_parent("s", {}, {})))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        results.put(("error", type(exc).__name__, str(exc)[:2000]))


@pytest.mark.slow  # starts processes (a fresh MLflow store's migrations take seconds each)
def test_processes_creating_a_fresh_database_together(tmp_path):
    """alembic's migrations on one fresh SQLite file from several processes at once crash all but
    one ("Online migration expected to match one row", "table ... already exists"); the
    creation lock serializes them."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3), context.Queue()
    processes = [context.Process(target=_create_at_once, args=(uri, barrier, results)) for _ in range(3)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=240) for _ in processes]
    for process in processes:
        process.join(60)
    assert all(outcome[0] == "ok" for outcome in outcomes), outcomes
    assert len({outcome[1] for outcome in outcomes}) == 1
    experiments = [e for e in MlflowClient(tracking_uri=uri).search_experiments() if e.name == "together"]
    assert len(experiments) == 1


@pytest.mark.parametrize(
    ("scheme", "module", "hint"),
    [
        ("postgresql+psycopg2", "psycopg2", 'needs the PostgreSQL driver: pip install "meminject[postgres]"'),
        # SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3, which meminject[postgres] is not
        ("postgresql", "psycopg", 'write postgresql+psycopg2:// and pip install "meminject[postgres]"'),
    ],
)
def test_a_missing_database_driver_is_one_line(monkeypatch, scheme, module, hint):
    from meminject.tracking._tracker import Tracker

    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` raises ModuleNotFoundError
    with pytest.raises(MemInjectError) as caught:
        Tracker(f"{scheme}://meminject:{SECRET}@127.0.0.1:1/nodriver", "x")
    message = str(caught.value)
    assert hint in message
    assert "\n" not in message and SECRET not in message and f"{scheme}://meminject:***@127.0.0.1:1/nodriver" in message


# --------------------------------------------------------------------------- MLflow server


@pytest.mark.slow
def test_no_password_on_the_console_with_a_tracking_server(tmp_path, capfd, monkeypatch):
    """MLflow 3 prints "🏃 View run <name> at: http://user:password@host/#/..." when a run ends
    on an HTTP server; the server ignores basic auth, so any password works here."""
    from meminject.tracking._tracker import Tracker

    with mlflow_server(tmp_path) as port:
        uri = f"http://meminject:{SECRET}@127.0.0.1:{port}"
        tracker = Tracker(uri, "links")
        parent = tracker.start_parent("s", {"storage": "x"}, {})
        trial = tracker.start_trial(parent, 0, "s", {})
        tracker.finish_trial(trial, {"injection.tweak": 2}, {"mean_gain": 0.1}, {"per_prompt.csv": "a,b\n1,2\n"})
        tracker.fail(tracker.start_trial(parent, 1, "s", {}), "boom")
        tracker.finish(parent)
        assert tracker.client.get_run(trial).info.status == "FINISHED"
        assert [a.path for a in tracker.client.list_artifacts(trial)] == [
            "per_prompt.csv"
        ]  # through the server's artifact store
        out, err = capfd.readouterr()
        assert SECRET not in out + err and "View run" not in out, out + err
        quick = Tracker(uri, "links", retry_s=0.5)

    from meminject.core._errors import TrackingError

    # the server is gone: one line, no password (MLflow's own HTTP retries turned down to keep it short)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(TrackingError) as caught:
        quick.log_metrics(parent, {"late": 1.0})
    assert (
        "\n" not in str(caught.value)
        and SECRET not in str(caught.value)
        and f"meminject:***@127.0.0.1:{port}" in str(caught.value)
    )


@pytest.mark.slow
@pytest.mark.parametrize("form", ["http://:{pw}@127.0.0.1:{port}", "http://u:{pw}@127.0.0.1:{port}"])
def test_a_sweep_on_a_tracking_server_never_shows_its_password(tmp_path, form):
    """Console, params, tags and every artifact (sweep.json, base_config.yaml, config.yaml) of a
    whole sweep against an HTTP tracking server, for each way of writing the password."""
    from conftest import TINY, mlflow_runs, run_cli

    with mlflow_server(tmp_path) as port:
        uri = form.format(pw=SECRET, port=port)
        args = [
            "sweep",
            *TINY,
            "sweep=paper_grid",
            "study=secret",
            "injection.tweak=choice(1)",
            "memory.encoding=choice(unembed)",
            f"storage={tmp_path / 'optuna.journal'}",
            f"tracking.uri={uri}",
            "progress=false",
        ]
        proc = run_cli(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert SECRET not in proc.stdout + proc.stderr
        runs = mlflow_runs(f"http://127.0.0.1:{port}")
        assert len(runs) == 1 + 3
        for run in runs:
            assert SECRET not in json.dumps([run.data.params, run.data.tags]), run.info.run_name
        artifacts = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
        assert {p.name for p in artifacts} >= {"sweep.json", "base_config.yaml", "config.yaml"}
        leaked = [str(p) for p in artifacts if SECRET.encode() in p.read_bytes()]
        assert not leaked, leaked


def test_the_sqlite_store_commits_in_wal_mode_and_other_sqlite_files_are_left_alone(tmp_path, monkeypatch):
    """The MLflow store's connections run in WAL with synchronous=NORMAL (a commit is an append,
    not a disk flush); an Optuna SQLite storage in the same process keeps SQLite's defaults."""
    from conftest import sweep_args
    from meminject.cli import main

    monkeypatch.chdir(tmp_path)
    args = [
        a if not a.startswith("storage=") else f"storage=sqlite:///{tmp_path / 'optuna.db'}"
        for a in sweep_args(tmp_path, "study=wal", "n_trials=2")
    ]
    assert main(args) == 0
    journal = {
        name: sqlite3.connect(tmp_path / name).execute("PRAGMA journal_mode").fetchone()[0]
        for name in ("mlflow.db", "optuna.db")
    }
    assert journal == {"mlflow.db": "wal", "optuna.db": "delete"}
    from sqlalchemy import create_engine, text

    with create_engine(f"sqlite:///{tmp_path / 'mlflow.db'}").connect() as connection:  # any engine on the store's file
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    with create_engine(f"sqlite:///{tmp_path / 'optuna.db'}").connect() as connection:
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL, SQLite's default
