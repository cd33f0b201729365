"""The one place meminject touches Optuna's private API, each use with why and its way out.

Optuna's public API covers "ask, run, tell" in one process. Two things a shared, crash-safe
worker pool needs have no public form yet:

* taking **only** a queued (enqueued) trial: ``study.ask()`` pops a queued trial when there
  is one, but samples a new point when there is none, which a grid sweep must never do;
* heartbeats outside ``study.optimize``: Optuna beats only inside ``optimize``; meminject's
  workers run their own ask/tell loop (stacked trials, OOM retries), so they beat through the
  storage's heartbeat interface themselves;
* several user attributes in one storage write: ``Trial.set_user_attr`` is one write per key
  and a trial records ~25 keys (its summary, its site, its per-prompt values), which cost
  ~10 ms per trial on a journal file: more than the rest of Optuna's bookkeeping together.

Replace each function below when Optuna grows the public form named in its docstring; nothing
else in meminject imports a private Optuna name.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled  # noqa: F401 - re-exported
from optuna.storages.journal import JournalStorage
from optuna.storages.journal._storage import JournalOperation

__all__ = ["BaseHeartbeat", "is_heartbeat_enabled", "pop_queued_trial", "set_user_attrs", "storage_of"]


def pop_queued_trial(study: optuna.Study) -> optuna.Trial | None:
    """A queued (WAITING) trial, taken atomically by this worker, or None when the queue is empty.

    Uses ``Study._pop_waiting_trial_id`` (the first step of ``Study.ask``); a public
    ``study.ask(only_queued=True)`` would replace it.
    """
    trial_id = study._pop_waiting_trial_id()
    return None if trial_id is None else optuna.Trial(study, trial_id)


def storage_of(study: optuna.Study) -> Any:
    """The study's storage object (``Study._storage``): heartbeats and stale-trial checks need
    it, and a public ``Study.storage`` property would replace this."""
    return study._storage


def trial_id_of(trial: optuna.Trial) -> int:
    """The storage id of a live trial (``Trial._trial_id``), which heartbeats are keyed by."""
    return trial._trial_id


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """``trial.set_user_attr(key, value)`` for every item, in one storage write where the storage
    allows it; the stored trial is the same as key by key (tested against the public calls).

    A journal file (the default storage) gets the very records ``set_user_attr`` appends, one
    per key, in one ``append_logs`` call (one lock, one write, one re-read) through
    ``JournalStorage._backend``, ``_thread_lock``, ``_replay_result`` and
    ``_sync_with_backend``. An RDB storage writes key by key (each its own transaction): its
    private batching is not worth a second private path. A public ``Trial.set_user_attrs``
    would replace this.

    Raises ``UpdateFinishedTrialError``, like ``set_user_attr``, when the trial was finished by
    another worker meanwhile; every record written is still replayed first, so the storage's
    view stays whole for the next call.
    """
    storage = trial.storage
    if not isinstance(storage, JournalStorage) or not attrs:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    worker_id = storage._replay_result.worker_id
    logs = [
        {
            "op_code": JournalOperation.SET_TRIAL_USER_ATTR,
            "worker_id": worker_id,
            "trial_id": trial._trial_id,
            "user_attr": {key: value},
        }
        for key, value in attrs.items()
    ]
    refused: UpdateFinishedTrialError | None = None
    with storage._thread_lock:
        storage._backend.append_logs(logs)
        while True:  # a refused record stops a replay; the rest are read by the next pass
            try:
                storage._sync_with_backend()
                break
            except UpdateFinishedTrialError as exc:
                refused = refused or exc
    if refused is not None:
        raise refused
    trial._cached_frozen_trial.user_attrs.update(attrs)
