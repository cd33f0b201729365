"""Crash recovery: heartbeats of running trials, and stale trials failed and re-queued.

A worker killed in the middle of a trial (SIGKILL, a preempted node, a lost GPU) leaves
that trial RUNNING for ever. While a worker runs trials it records a heartbeat for each of
them every ``interval`` seconds (Optuna's heartbeat, in a background thread). Any worker,
before it asks for new trials, fails the trials whose heartbeat is older than ``grace``
seconds (:func:`optuna.storages.fail_stale_trials`); the stale-trial callback re-queues
the same point as a WAITING trial (Optuna's ``RetryHeartbeatStaleTrialCallback``) and
closes the dead trial's MLflow run as FAILED. Exactly one worker wins each stale trial (the
storage's state change is atomic), so a point is re-run once.

Optuna's RDB storage (SQLite, PostgreSQL, MySQL) has heartbeats built in; its journal file
storage (meminject's default) does not, so :class:`HeartbeatJournalStorage` adds them, with
the heartbeat kept as a trial system attribute. Optuna's private heartbeat interface is reached
only through :mod:`meminject.store._optuna`.
"""

from __future__ import annotations

import copy
import threading
import time
import warnings
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Callable, Iterator, Sequence

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from ..tracking._schema import ATTR_HEARTBEAT
from ._optuna import BaseHeartbeat, IndexedJournalStorage, is_heartbeat_enabled, storage_of

__all__ = [
    "HeartbeatJournalStorage",
    "StaleTrialRecovery",
    "heartbeats",
    "recover_stale_trials",
    "DEFAULT_HEARTBEAT",
    "HEARTBEAT_ATTR",
]

HEARTBEAT_ATTR = ATTR_HEARTBEAT
DEFAULT_HEARTBEAT = (30, 120)  # (interval, grace) in seconds: a trial is stale after 4 missed beats


class StaleTrialRecovery:
    """Heartbeat-stale trial callback: re-queue its point, close its MLflow run as FAILED.

    ``tracker`` is attached by the worker once it has one (the storage is opened first).
    """

    def __init__(self, max_retry: int | None = 3) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.tracker: Any = None
        self.recovered: list[int] = []  # numbers of the stale trials this process failed

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        requeued = copy.deepcopy(trial)
        # The retry gets its own MLflow run when a worker picks it up.
        requeued.user_attrs = {k: v for k, v in trial.user_attrs.items() if k != "mlflow_run_id"}
        # Optuna's retry copies every system attr; the dead trial's last beat is not the retry's.
        requeued.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != HEARTBEAT_ATTR}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry(study, requeued)
        self.recovered.append(trial.number)
        if self.tracker is not None and run_id:
            self.tracker.fail(
                run_id, f"worker stopped beating (no heartbeat for the grace period); trial {trial.number} re-queued"
            )


def recover_stale_trials(study: optuna.Study) -> None:
    """Fail the study's stale trials and run the recovery callback (no-op without heartbeats)."""
    if not is_heartbeat_enabled(storage_of(study)):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@contextmanager
def heartbeats(storage: Any, trial_ids: Sequence[int]) -> Iterator[None]:
    """Beat for these trials every interval while the block runs (nothing without heartbeats)."""
    if not trial_ids or not is_heartbeat_enabled(storage):
        yield
        return
    interval = storage.get_heartbeat_interval()
    stop = threading.Event()

    def beat() -> None:
        while True:
            for trial_id in trial_ids:
                try:
                    storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - a missed beat must not kill the trial
                    pass
            if stop.wait(timeout=interval):
                return

    thread = threading.Thread(target=beat, name="meminject-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _start_epoch(start: datetime) -> float:
    """Epoch seconds of a trial's ``datetime_start``.

    Optuna hands the start back as a *naive local* datetime (the journal keeps UTC and its
    replay converts it to the reader's local time), so a naive value is local wall time and
    ``datetime.timestamp`` reads it so. In the repeated hour when clocks go back one wall time
    names two instants; the later one is taken, so a live trial is never judged an hour older
    than it is (a dead one is at worst detected an hour late, once a year).
    """
    if start.tzinfo is not None:
        return start.timestamp()
    return max(start.replace(fold=0).timestamp(), start.replace(fold=1).timestamp())


class HeartbeatJournalStorage(IndexedJournalStorage, BaseHeartbeat):
    """Optuna's journal storage with heartbeats (kept as a trial system attribute).

    Holds to :class:`optuna.storages.RDBStorage`'s heartbeat contract: the interval and the
    grace period must be positive, the grace period defaults to twice the interval, and a
    heartbeat storage warns once that heartbeats are an experimental Optuna feature.
    """

    def __init__(
        self,
        backend: Any,
        *,
        heartbeat_interval: int,
        grace_period: int | None = None,
        heartbeat_stale_trial_callback: Callable | None = None,
    ) -> None:
        if heartbeat_interval <= 0:
            raise ValueError("The value of `heartbeat_interval` should be a positive integer.")
        if grace_period is not None and grace_period <= 0:
            raise ValueError("The value of `grace_period` should be a positive integer.")
        warnings.warn(
            "Argument ``heartbeat_interval`` is an experimental feature. The interface can change in the future.",
            optuna.exceptions.ExperimentalWarning,
            stacklevel=2,
        )
        super().__init__(backend)
        # No int(): a fractional interval is valid (Optuna waits on it with Event.wait) and
        # truncating it could turn a positive interval into 0.
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = 2 * heartbeat_interval if grace_period is None else grace_period
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished meanwhile (told, or failed as stale by another worker)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """The RUNNING trials whose last sign of life is older than the grace period.

        A trial's last sign of life is the later of its last heartbeat and its start. The
        start counts because a worker can die between being handed a trial and its first
        beat (killed while loading a model, say); such a trial has no heartbeat at all, and
        Optuna's RDB storage, which skips trials without a heartbeat, would leave it RUNNING
        for ever. The later of the two counts because a retried trial inherits the dead
        trial's system attrs, its last beat included, and must not be stale before it beats.

        Every time is in epoch seconds: beats are written with ``time.time()`` and the start
        is converted by :func:`_start_epoch`. Unlike RDB storage, which compares times on the
        database server, beats come from each worker's clock, so workers on several machines
        need their clocks in sync to well within the grace period.
        """
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            signs = [float(trial.system_attrs[HEARTBEAT_ATTR])] if HEARTBEAT_ATTR in trial.system_attrs else []
            if trial.datetime_start is not None:
                signs.append(_start_epoch(trial.datetime_start))
            if signs and now - max(signs) > self.grace_period:
                stale.append(self.get_trial_id_from_study_id_trial_number(study_id, trial.number))
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable | None:
        return self.heartbeat_stale_trial_callback
