"""The one place meminject touches Optuna's private API, each use with why and its way out.

Optuna's public API covers "ask, run, tell" in one process. Two things a shared, crash-safe
worker pool needs have no public form yet:

* taking **only** a queued (enqueued) trial: ``study.ask()`` pops a queued trial when there
  is one, but samples a new point when there is none, which a grid sweep must never do;
* heartbeats outside ``study.optimize``: Optuna beats only inside ``optimize``; meminject's
  workers run their own ask/tell loop (stacked trials, OOM retries), so they beat through the
  storage's heartbeat interface themselves.

Replace each function below when Optuna grows the public form named in its docstring; nothing
else in meminject imports a private Optuna name.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled  # noqa: F401 - re-exported

__all__ = ["BaseHeartbeat", "is_heartbeat_enabled", "pop_queued_trial", "storage_of"]


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
