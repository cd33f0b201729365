"""A database tracking store (``postgresql://``, ``mysql://``) must accept one connection now.

MLflow opens such a store with its own retry loop (ten attempts, ~100 s of backoff) and then
prints each attempt's traceback, also when the password is wrong, which no waiting fixes.
:func:`probe_database` connects once, with a short timeout, before MLflow does: a refused
login, a missing database or an unreachable server is one line at once.
"""

from __future__ import annotations

from ..core._errors import TrackingError, first_line
from ..core._redaction import redact

__all__ = ["probe_database", "CONNECT_TIMEOUT_S"]

CONNECT_TIMEOUT_S = 10  # one connection attempt to a database server (libpq's connect_timeout)


def _is_database(uri: str) -> bool:
    scheme = uri.partition("://")[0].lower() if "://" in uri else ""
    return bool(scheme) and not scheme.startswith(("sqlite", "http", "https", "file", "databricks"))


def probe_database(uri: str, timeout: int = CONNECT_TIMEOUT_S) -> None:
    """Connect to a database store once; refuse in one line when that fails (nothing to do for
    SQLite, HTTP servers and file stores; a missing driver is left to the store's own hint)."""
    if not _is_database(uri):
        return
    try:
        import sqlalchemy
    except ImportError:  # pragma: no cover - MLflow depends on it
        return
    scheme = uri.partition("://")[0].lower()
    connect_args = {"connect_timeout": timeout} if scheme.startswith(("postgres", "mysql")) else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
    except ModuleNotFoundError:
        return  # open_client names the driver to install
    except Exception as exc:  # noqa: BLE001 - an URL SQLAlchemy cannot read
        raise TrackingError(
            f"tracking.uri={redact(uri)} is not a database URL SQLAlchemy can read ({redact(first_line(exc))}); "
            "write dialect+driver://user@host:port/database"
        ) from None
    try:
        with engine.connect():
            return
    except Exception as exc:  # noqa: BLE001 - each driver has its own errors; all end the same way
        reason = _reason(exc)
        raise TrackingError(
            f"tracking store {redact(uri)} refused the connection: {reason}; check the user, the password "
            "(PGPASSWORD, ~/.pgpass or MLFLOW_TRACKING_URI), the database name and that the server is up, "
            "or set tracking.enabled=false to run without MLflow"
        ) from None
    finally:
        engine.dispose()


def _reason(exc: BaseException) -> str:
    """The driver's own words (``FATAL: password authentication failed for user "u"``), one line."""
    original = getattr(exc, "orig", None) or exc
    text = " ".join(str(original).split())  # libpq's message spans lines
    return redact(text[:300] or type(original).__name__)
