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
the heartbeat kept as a trial system attribute.
"""

from __future__ import annotations

import copy
import threading
import time
import warnings
from contextlib import contextmanager
from datetime import timezone
from typing import Any, Callable, Iterator, Sequence

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.storages.journal import JournalStorage
from optuna.trial import FrozenTrial, TrialState

__all__ = ["HeartbeatJournalStorage", "StaleTrialRecovery", "heartbeats", "recover_stale_trials", "DEFAULT_HEARTBEAT"]

HEARTBEAT_ATTR = "meminject.heartbeat"
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry(study, requeued)
        self.recovered.append(trial.number)
        if self.tracker is not None and run_id:
            self.tracker.fail(run_id, f"worker stopped beating (no heartbeat for the grace period); trial {trial.number} re-queued")


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with heartbeats (kept as a trial system attribute)."""

    def __init__(self, backend: Any, *, heartbeat_interval: int, grace_period: int, heartbeat_stale_trial_callback: Callable | None = None) -> None:
        super().__init__(backend)
        self.heartbeat_interval = int(heartbeat_interval)
        self.grace_period = int(grace_period)
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished meanwhile (told, or failed as stale by another worker)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_ATTR)
            if beat is None and trial.datetime_start is not None:
                # Died between being asked and its first beat: judge it by its start time.
                beat = trial.datetime_start.replace(tzinfo=trial.datetime_start.tzinfo or timezone.utc).timestamp()
            if beat is not None and now - float(beat) > self.grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable | None:
        return self.heartbeat_stale_trial_callback


def recover_stale_trials(study: optuna.Study) -> None:
    """Fail the study's stale trials and run the recovery callback (no-op without heartbeats)."""
    if not is_heartbeat_enabled(study._storage):
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
