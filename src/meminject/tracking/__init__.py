"""The tracking layer: MLflow runs in a SQLite store in ``mlruns/`` (or a server), every store
call retried through transient errors and reported in one line when it stays down."""

from ._probe import probe_database
from ._retry import RetryingClient, open_client, sqlite_path
from ._tracker import (
    Tracker,
    TrackingError,
    experiment_name,
    log_eval_run,
    probe_server,
    retry_seconds,
    tracking_uri,
)

__all__ = [
    "Tracker",
    "TrackingError",
    "log_eval_run",
    "experiment_name",
    "probe_server",
    "probe_database",
    "retry_seconds",
    "tracking_uri",
    "RetryingClient",
    "open_client",
    "sqlite_path",
]
