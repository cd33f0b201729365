"""A SQLite MLflow store whose creation stopped half-way (a full disk during the migrations).

MLflow creates a fresh ``mlflow.db`` by running its alembic migrations; stopped part-way,
the file keeps some tables and an old schema version, and every later opening fails
("table ... already exists", "out-of-date database schema"). Such a file holds no runs, so
nothing is lost by starting over: it is moved aside (kept, as ``<name>.broken-<UTC time>``)
and the store is created again; a sweep then writes its runs from the study on resume. A
file that does hold runs is never moved: the error says how to do it by hand.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from ..core._errors import TrackingError, first_line
from ..core._redaction import redact

__all__ = ["holds_runs", "set_aside"]

log = logging.getLogger("meminject")


def holds_runs(database: Path) -> bool:
    """Whether the SQLite file has at least one run (True when that cannot be told)."""
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return True
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "runs" not in tables:
            return False
        return connection.execute("SELECT 1 FROM runs LIMIT 1").fetchone() is not None
    except sqlite3.Error:
        return True
    finally:
        connection.close()


def set_aside(database: Path, exc: BaseException, uri: str) -> Path:
    """Move a half-created store (no runs) aside, with its WAL files, and say so in one line;
    raise one :class:`TrackingError` line with the way out for a store that holds runs."""
    if holds_runs(database):
        raise TrackingError(
            f"MLflow store {redact(uri)} has incomplete or outdated tables ({redact(first_line(exc))}) and holds runs: "
            f"back it up and run `mlflow db upgrade {redact(uri)}`, or move it aside (mv {database} {database}.broken) "
            "and rerun: a sweep writes its runs again from the study"
        ) from exc
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = database.with_name(f"{database.name}.broken-{stamp}")
    n = 0
    while aside.exists():
        n += 1
        aside = database.with_name(f"{database.name}.broken-{stamp}-{n}")
    for suffix in ("-wal", "-shm"):  # SQLite's own files of the same database, moved with it
        side = database.with_name(database.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    os.replace(database, aside)
    log.warning(
        "note: the MLflow store %s was half-created (%s) and holds no runs: moved aside to %s and created again",
        database,
        redact(first_line(exc, 120)),
        aside,
    )
    return aside
