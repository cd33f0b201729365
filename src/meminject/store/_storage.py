"""Study storage: a journal file by default (safe for workers on one machine), or any RDB URL.

The journal is repaired on open when its last record was cut (SIGKILL, power loss, a full
disk): Optuna would skip the partial line on read but glue the next append onto it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import optuna

from ..core._errors import ConfigError, first_line
from ..core._paths import mlruns_dir
from ..core._secrets import STORAGE_ENV
from ..tracking._retry import permanent_kind
from ..tracking._tracker import redact

__all__ = ["default_storage_url", "open_storage", "load_study", "study_names", "storage_lock"]

log = logging.getLogger("meminject")


def default_storage_url() -> str:
    """``$MEMINJECT_STORAGE`` (a URL kept out of shell history and ``ps``), else this folder's journal."""
    return os.environ.get(STORAGE_ENV) or str(mlruns_dir(create=False) / "optuna.journal")  # made when written


def _db_driver_hint(url: str, exc: BaseException) -> str | None:
    if isinstance(exc, ModuleNotFoundError) and url.startswith(("postgresql", "postgres")):
        return f'{redact(url)} needs the PostgreSQL driver: pip install "meminject[postgres]"'
    if isinstance(exc, ModuleNotFoundError) and url.startswith("mysql"):
        return f"{redact(url)} needs a MySQL driver: pip install pymysql"
    return None


def _journal_damage(url: str) -> str | None:
    """The line naming a journal's corrupt record (Optuna says only ``Expecting value``)."""
    from ._journal import damage_line

    if "://" in url:
        return None
    try:
        return damage_line(url)
    except OSError:
        return None


def open_storage(
    url: str | None, heartbeat: tuple[int, int] | None = None, recovery: Any = None
) -> optuna.storages.BaseStorage:
    """Open the study storage; with ``heartbeat=(interval, grace)`` running trials beat and
    stale ones go to ``recovery`` (a stale-trial callback)."""
    from ._journal import repair_torn_journal
    from ._recovery import HeartbeatJournalStorage

    url = url or default_storage_url()
    beat = (
        {}
        if heartbeat is None
        else {
            "heartbeat_interval": heartbeat[0],
            "grace_period": heartbeat[1],
            "heartbeat_stale_trial_callback": recovery,
        }
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if "://" not in url:
                from optuna.storages.journal import JournalFileBackend

                from ._optuna import IndexedJournalStorage

                Path(url).parent.mkdir(parents=True, exist_ok=True)
                repaired = repair_torn_journal(url)
                if repaired:
                    log.warning("note: %s", repaired)
                if heartbeat is None:
                    return IndexedJournalStorage(JournalFileBackend(url))
                return HeartbeatJournalStorage(JournalFileBackend(url), **beat)
            if url.startswith("sqlite:///"):
                Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **beat)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors of many kinds
        hint = _db_driver_hint(url, exc) or _journal_damage(url)
        if hint:
            raise ConfigError(hint) from exc
        kind = permanent_kind(exc)  # a full disk: permanent, said at once with the way out
        if kind is not None:
            raise ConfigError(
                f"cannot open study storage {redact(url)}: {kind[0]} ({first_line(exc, 200)}); {kind[1]}"
            ) from exc
        raise ConfigError(f"cannot open study storage {redact(url)} ({first_line(exc, 200)})") from exc


def _local_file(url: str) -> Path | None:
    """The file of a journal or SQLite storage, None for a server."""
    if "://" not in url:
        return Path(url)
    return Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else None


def study_names(storage: optuna.storages.BaseStorage, url: str | None) -> list[str]:
    try:
        return [s.study_name for s in optuna.get_all_study_summaries(storage)]
    except Exception as exc:  # noqa: BLE001
        damage = _journal_damage(url or default_storage_url())
        raise ConfigError(
            damage or f"cannot read study storage {redact(url or default_storage_url())} ({first_line(exc, 200)})"
        ) from exc


def load_study(name: str | None, url: str | None, storage: Any = None, sampler: Any = None) -> optuna.Study:
    """A study of the storage by name; without a name, the only one (never a guess among many)."""
    where = redact(url or default_storage_url())
    local = _local_file(url or default_storage_url())
    if storage is None and local is not None and not local.exists():  # reading creates nothing
        raise ConfigError(f"no studies in {where} yet; run `meminject sweep` first")
    storage = storage or open_storage(url)
    names = study_names(storage, url)
    if not names:
        raise ConfigError(f"no studies in {where} yet; run `meminject sweep` first")
    if name is None:
        if len(names) > 1:
            raise ConfigError(f"{where} holds {len(names)} studies; name one with study=NAME: {', '.join(names)}")
        name = names[0]
    if name not in names:
        raise ConfigError(
            f"no study {name!r} in {where}; studies: {', '.join(names)} (start one with `meminject sweep`)"
        )
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler)


@contextlib.contextmanager
def storage_lock(url: str | None, storage: Any = None) -> Iterator[None]:
    """Serialize study setup across processes: a file lock beside a journal or SQLite file,
    a PostgreSQL advisory lock, else nothing (workers still drop duplicate points)."""
    url = url or default_storage_url()
    path = url if "://" not in url else (url[len("sqlite:///") :] if url.startswith("sqlite:///") else None)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # ./mlruns is made when first written
        with open(f"{path}.meminject-lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    engine = getattr(storage, "engine", None)
    if engine is not None and url.startswith(("postgresql", "postgres")):
        from sqlalchemy import text

        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(772034519)"))
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(772034519)"))
        return
    yield
