"""Reaching the MLflow tracking store reliably, and failing in one line when it cannot be reached.

* Transient store errors (a SQLite file locked by another worker, a busy or restarting
  tracking server) are retried with exponential backoff for ``tracking.retry_s`` seconds,
  then reported as one :class:`~meminject.errors.TrackingError` line. Other errors raise at once.
* SQLite: the connection waits on locks (``?timeout=`` on the store URI) — MLflow's own
  ``PRAGMA busy_timeout`` covers its sessions only, not the table check when a store opens,
  which otherwise gives up after sqlite3's default 5 s; and the first creation of a database
  is serialized by ``fcntl.flock`` on ``<db>.lock``: two processes migrating one fresh file
  at once can crash one of them in alembic.
* SQLite commits in WAL mode with ``synchronous=NORMAL`` (see :func:`_fast_sqlite_commits`).
* A missing database driver (``psycopg2`` for ``postgresql://``) is a one-line install hint.
* MLflow's "🏃 View run ... at: http://user:password@host/..." lines are switched off.
"""

from __future__ import annotations

import functools
import os
import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..core._errors import TrackingError, first_line
from ._broken import set_aside
from ..core._interrupts import INTERRUPTED
from ..core._redaction import redact

try:
    import fcntl
except ImportError:  # not on Windows: SQLite's own locking is all there is
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CLOCK",
    "DEFAULT_RETRY_S",
    "Clock",
    "RetryingClient",
    "creation_lock",
    "first_line",
    "is_transient",
    "permanent_error",
    "permanent_kind",
    "open_client",
    "quiet_run_links",
    "retrying",
    "sqlite_path",
]

DEFAULT_RETRY_S = 60.0
T = TypeVar("T")

_TRANSIENT_TEXT = re.compile(
    r"database (?:table )?is (?:locked|busy)|temporarily[ _]unavailable|too many requests|service unavailable"
    r"|connection (?:refused|reset|aborted)|timed out|max retries exceeded|remote ?disconnected"
    r"|(?:error|status) code:? (?:429|502|503|504)\b|\b(?:429|502|503|504) (?:client|server) error",
    re.IGNORECASE,
)
_TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED"})
# MLflow reports every SQLAlchemy OperationalError as TEMPORARILY_UNAVAILABLE, but waiting does
# not fix these: fail at once instead of after tracking.retry_s.
_PERMANENT_TEXT = re.compile(
    r"no such (?:table|column)|unable to open database|readonly database|not a database|syntax error"
    r"|authentication failed|does not exist|out-of-date database schema",
    re.IGNORECASE,
)
_SCHEMA_TEXT = r"table \S+ already exists|out-of-date database schema|can't locate revision|no such (?:table|column)"
# Errors that waiting never fixes, each with what it is and the way out: one line at once.
_PERMANENT_KINDS = tuple(
    (re.compile(pattern, re.IGNORECASE), what, way)
    for pattern, what, way in (
        (
            r"database or disk is full|no space left on device|disk quota exceeded",
            "the disk is full",
            "free space, then rerun the same command (finished trials are kept, their runs are written then)",
        ),
        (
            _SCHEMA_TEXT,
            "the store's tables are incomplete or of another MLflow version",
            "move the store aside and rerun (a sweep writes its runs again from the study), "
            "or back it up and run `mlflow db upgrade URI`",
        ),
        (
            r"authentication failed|access denied for user|(?:error|status) code:? 40[13]\b|\b40[13] (?:client error|unauthorized|forbidden)",
            "authentication failed",
            "check the user and password (MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD, PGPASSWORD or ~/.pgpass)",
        ),
        (
            r"run with id=\S+ not found|RESOURCE_DOES_NOT_EXIST",
            "a run is missing from the store",
            "use the sweep's own tracking.uri (a run id of one store is not in another), "
            "or rerun the sweep: its runs are written again from the study",
        ),
    )
)


def permanent_kind(exc: BaseException) -> tuple[str, str] | None:
    """(what it is, the way out) when ``exc`` (or an exception it came from) is a store error
    that waiting never fixes (:data:`_PERMANENT_KINDS`), else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = f"{current} {getattr(current, 'error_code', '')}"
        for pattern, what, way in _PERMANENT_KINDS:
            if pattern.search(text):
                return what, way
        current = current.__cause__ or current.__context__
    return None


def permanent_error(exc: BaseException, what: str, uri: str) -> TrackingError | None:
    """The one line for a permanent store error (see :func:`permanent_kind`), or None."""
    kind = permanent_kind(exc)
    if kind is None:
        return None
    return TrackingError(f"MLflow {what} failed at {redact(uri)}: {kind[0]} ({redact(first_line(exc))}); {kind[1]}")


_ALEMBIC_RACE = "Online migration expected to match one row"
_DRIVERS = {  # import name -> (database, how to install)
    "psycopg2": ("PostgreSQL", 'pip install "meminject[postgres]"'),
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; meminject[postgres] brings psycopg2
    "psycopg": (
        "PostgreSQL",
        'write postgresql+psycopg2:// and pip install "meminject[postgres]" (or pip install "psycopg[binary]")',
    ),
    "pg8000": ("PostgreSQL", "pip install pg8000"),
    "pymysql": ("MySQL", "pip install pymysql"),
    "MySQLdb": ("MySQL", "pip install mysqlclient"),
    "pymssql": ("SQL Server", "pip install pymssql"),
    "pyodbc": ("SQL Server", "pip install pyodbc"),
}


def quiet_run_links() -> None:
    """No "🏃 View run <name> at: <url>" lines: MLflow prints them on stdout whenever a run ends
    on an HTTP server, with the tracking URI's password in the URL. meminject prints run ids
    itself. MLflow's supported switch; set (not defaulted) because a leak is never wanted."""
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def is_transient(exc: BaseException) -> bool:
    """Whether waiting may fix ``exc`` (or an exception it was raised from)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = _transient_one(current)
        if verdict is not None:
            return verdict
        current = current.__cause__ or current.__context__
    return False


def _transient_one(exc: BaseException) -> bool | None:
    """True/False when ``exc`` decides it; None to look at the exception it came from."""
    text = str(exc)
    if permanent_kind(exc) is not None:  # the whole chain: a full disk wrapped as TEMPORARILY_UNAVAILABLE
        return False
    if isinstance(exc, sqlite3.OperationalError):
        return bool(re.search(r"database (?:table )?is (?:locked|busy)", text, re.IGNORECASE))
    if _PERMANENT_TEXT.search(text):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):  # refused, reset, aborted; socket timeouts
        return True
    try:
        import requests
        import sqlalchemy.exc
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover - MLflow depends on all three
        return None
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(exc, sqlalchemy.exc.OperationalError):  # a locked file; a database server that is down or restarting
        return True
    if isinstance(exc, MlflowException):
        if getattr(exc, "error_code", None) in _TRANSIENT_CODES or _TRANSIENT_TEXT.search(text):
            return True
        return None  # the REST client wraps the connection error: look at it
    return None


class Clock:
    """Where :func:`retrying` reads the time and waits: the real clock. Tests pass (or patch
    :data:`CLOCK` with) a fake one, so a lock held "for seconds" costs them no real time."""

    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)


CLOCK = Clock()  # the default of retrying(clock=None), looked up at each call


def retrying(call: Callable[[], T], what: str, uri: str, retry_s: float, clock: Clock | None = None) -> T:
    """``call()``, retried with exponential backoff (50 ms doubling to 2 s, jittered so workers
    do not retry in step) while it fails transiently, for ``retry_s`` seconds at most, and not
    after Ctrl-C/SIGTERM (a call made with signals held must not keep the user waiting).
    ``clock`` (``monotonic()``, ``sleep()``): :data:`CLOCK` unless given."""
    clock = CLOCK if clock is None else clock
    deadline = clock.monotonic() + max(0.0, retry_s)
    delay = 0.05
    while True:
        error: BaseException | None = None
        permanent: TrackingError | None = None
        try:
            return call()
        except TrackingError:
            raise  # already one line (a nested retrying call)
        except Exception as exc:  # noqa: BLE001 - sorted below
            if not is_transient(exc):
                permanent = permanent_error(exc, what, uri)
                if permanent is None:
                    raise
            error = exc
        if permanent is not None:  # raised outside the except block: the line, no chained context shown
            raise permanent from error
        remaining = deadline - clock.monotonic()
        if remaining <= 0 or INTERRUPTED.is_set():  # interrupted (signals held meanwhile): no more waiting
            # raised outside the except block: the message is the line, no chained context shown
            raise TrackingError(
                f"MLflow {what} failed at {redact(uri)}: {redact(first_line(error))} (still failing after tracking.retry_s={retry_s:g} s); "
                "check that the tracking server or database is up and not held by a stuck process, raise tracking.retry_s, "
                "or set tracking.enabled=false to run without MLflow"
            ) from error
        clock.sleep(min(remaining, delay * random.uniform(0.5, 1.0)))
        delay = min(delay * 2, 2.0)


class RetryingClient:
    """An ``MlflowClient`` whose public methods retry transient store errors (see :func:`retrying`).

    A proxy rather than wrappers in ``Tracker``: code that calls ``tracker.client.get_run`` or
    ``.set_tag`` directly gets the retries too. ``unwrapped`` is the plain client.
    """

    def __init__(self, client: Any, uri: str, retry_s: float, clock: Clock | None = None):
        self.unwrapped = client
        self.uri = uri
        self.retry_s = retry_s
        self.clock = clock  # None: retrying's default

    def __getattr__(self, name: str) -> Any:
        client = self.__dict__.get("unwrapped")
        if client is None:  # while unpickling, before __init__'s attributes exist
            raise AttributeError(name)
        attr = getattr(client, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return retrying(lambda: attr(*args, **kwargs), name, self.uri, self.retry_s, self.clock)

        return call


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and ``:memory:``)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


def _store_uri(uri: str, retry_s: float) -> str:
    """For SQLite, the URI with a busy timeout for sqlite3 (SQLAlchemy passes ``timeout`` on):
    the table check MLflow runs when a store opens waits on a lock instead of failing."""
    if sqlite_path(uri) is None or re.search(r"[?&]timeout=", uri):
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}timeout={max(retry_s, 0.001):g}"


@contextmanager
def creation_lock(uri: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``<db>.lock`` next to a SQLite store (nothing for other stores).

    Held while a store opens (its first opening creates the tables through alembic migrations)
    and while an experiment is looked up or created. The lock file stays: removing it would
    race with a process that has just opened it.
    """
    path = sqlite_path(uri)
    handle = None
    if path is not None and fcntl is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 - closed below
        except OSError:  # a read-only folder: SQLite's own locking is all there is
            handle = None
    try:
        if handle is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # the holder is bounded by its own retry_s
        yield
    finally:
        if handle is not None:
            handle.close()  # closing releases the flock


_FAST_COMMIT_FILES: set[str] = set()  # real paths of the SQLite stores opened in this process


def _fast_sqlite_commits(path: Path) -> None:
    """WAL journal and ``synchronous=NORMAL`` on every connection MLflow opens to this store.

    In SQLite's default (rollback journal, full sync) every commit waits for the disk, and a
    trial's run takes ~8 commits: measured here 17 ms per run (create, 72 params, 15 metrics,
    close) against 12 ms in WAL with NORMAL. A process killed mid-sweep still loses no committed
    write; only an OS crash or power cut can lose the last few, and the file stays consistent.
    WAL also lets readers (the MLflow UI) read while a worker writes. The engine is MLflow's,
    so this is a SQLAlchemy "connect" listener on every engine, acting on these files only.
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    _FAST_COMMIT_FILES.add(os.path.realpath(path))
    if not event.contains(Engine, "connect", _on_connect):
        event.listen(Engine, "connect", _on_connect)


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    try:
        main = [row[2] for row in dbapi_connection.execute("PRAGMA database_list") if row[1] == "main"]
        if main and os.path.realpath(main[0]) in _FAST_COMMIT_FILES:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")  # kept in the file: once is enough, repeating is free
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")  # per connection
    except sqlite3.Error:  # locked by another process at this moment: this connection stays as correct, only slower
        pass


def _forget_engine(store_uri: str) -> None:
    """Close and drop MLflow's cached SQLAlchemy engine of ``store_uri`` (a private map of
    ``SqlAlchemyStore``; nothing to do where it does not exist)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:  # pragma: no cover
        return
    engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(store_uri, None)
    if engine is not None:
        engine.dispose()


def open_client(uri: str, retry_s: float, clock: Clock | None = None) -> RetryingClient:
    """An MLflow client for ``uri`` whose store is open (created on first use), with retries
    (waiting on ``clock``, see :func:`retrying`)."""
    from mlflow.tracking import MlflowClient

    quiet_run_links()
    store_uri = _store_uri(uri, retry_s)
    database = sqlite_path(uri)
    if database is not None:
        _fast_sqlite_commits(database)

    def connect() -> Any:
        with creation_lock(uri):
            try:
                return MlflowClient(tracking_uri=store_uri)
            except Exception as exc:  # noqa: BLE001
                if database is not None and re.search(_SCHEMA_TEXT, str(exc), re.IGNORECASE):
                    _forget_engine(store_uri)  # MLflow keeps one engine per URI, open on the old file
                    set_aside(database, exc, uri)  # a half-created store with no runs: moved aside, or one line
                    return MlflowClient(tracking_uri=store_uri)
                if _ALEMBIC_RACE not in str(exc):
                    raise
            # something outside meminject (an `mlflow server`) migrated the fresh database at the
            # same moment; it exists now, so opening it again finds its tables
            return MlflowClient(tracking_uri=store_uri)

    try:
        client = retrying(connect, "store opening", uri, retry_s, clock)
    except ModuleNotFoundError as exc:
        driver = _DRIVERS.get((exc.name or "").split(".")[0])
        if driver is None:
            raise
        raise TrackingError(f"tracking store {redact(uri)} needs the {driver[0]} driver: {driver[1]}") from exc
    return RetryingClient(client, uri, retry_s, clock)
