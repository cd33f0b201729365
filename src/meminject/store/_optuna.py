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
  ~10 ms per trial on a journal file: more than the rest of Optuna's bookkeeping together;
* a trial's sampled params in one storage write: ``trial.suggest_*`` writes each param as it
  is sampled (a journal append each, ~0.4 ms with its lock and fsync), on the worker's
  critical path between two forward passes;
* a TPE whose per-trial cost stays flat as the study grows: ``TPESampler`` reads every past
  trial through ``Study._get_trials`` at each suggestion, so its cost is linear in their
  number; :func:`bounded_view` hands it a bounded set instead (a public "condition on these
  trials" option would replace it), and :class:`IndexedJournalStorage` lists a study's trials
  without re-reading the finished ones (every ask and suggestion lists them several times);
* a stacked pass's trials created, and told, in one storage write each: ``study.ask()`` and
  ``study.tell()`` are an append (and an fsync) per trial, ~1 ms each per trial on SmolLM2's
  sweep at 16 trials per forward: a third of the critical path left after the writer process.

Replace each function below when Optuna grows the public form named in its docstring; nothing
else in meminject imports a private Optuna name.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled  # noqa: F401 - re-exported
from optuna.storages.journal import JournalStorage
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import TrialState

__all__ = [
    "IndexedJournalStorage",
    "ask_many",
    "bounded_view",
    "BaseHeartbeat",
    "is_heartbeat_enabled",
    "params_in_one_write",
    "pop_queued_trial",
    "set_many_user_attrs",
    "set_user_attrs",
    "storage_of",
    "tell_many",
]


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
    if set_many_user_attrs([(trial, attrs)]):
        raise UpdateFinishedTrialError(f"trial {trial.number} was finished meanwhile; its attributes were refused")


def set_many_user_attrs(items: list[tuple[optuna.Trial, dict[str, Any]]]) -> set[int]:
    """:func:`set_user_attrs` for several trials (a stacked pass's), in one storage write on a
    journal file. Returns the numbers of the trials that refused (finished by another worker
    meanwhile); the others hold their attributes, as if each had been written alone."""
    journal = [(t, a) for t, a in items if isinstance(t.storage, JournalStorage) and a]
    refused: set[int] = set()
    for trial, attrs in items:
        if attrs and not isinstance(trial.storage, JournalStorage):  # an RDB: key by key, its own transactions
            try:
                for key, value in attrs.items():
                    trial.set_user_attr(key, value)
            except UpdateFinishedTrialError:
                refused.add(trial.number)
    if not journal:
        return refused
    storage = journal[0][0].storage
    logs = [
        {
            "op_code": JournalOperation.SET_TRIAL_USER_ATTR,
            "worker_id": storage._replay_result.worker_id,
            "trial_id": trial._trial_id,
            "user_attr": {key: value},
        }
        for trial, attrs in journal
        for key, value in attrs.items()
    ]
    try:
        _append_and_replay(storage, logs)
    except UpdateFinishedTrialError:  # which ones: those finished before their records were read
        for trial, _ in journal:
            if storage.get_trial(trial._trial_id).state.is_finished():
                refused.add(trial.number)
    for trial, attrs in journal:
        if trial.number not in refused:
            trial._cached_frozen_trial.user_attrs.update(attrs)
    return refused


def _append_and_replay(storage: JournalStorage, logs: list[dict[str, Any]]) -> None:
    """Append journal records in one ``append_logs`` and replay them; raises the first
    ``UpdateFinishedTrialError`` after every record was read."""
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


@contextlib.contextmanager
def params_in_one_write(trial: optuna.Trial) -> Iterator[None]:
    """Within the block, ``trial.suggest_*`` samples as usual but the trial's params are
    appended to a journal file in one write at the end (the very records ``set_trial_param``
    appends, in order); other storages write them one by one. Nothing reads this trial's
    stored params meanwhile: ``Trial`` keeps them in its own cached copy, and samplers read
    only other trials. Uses ``JournalStorage.set_trial_param``'s record format (op code,
    ``distribution_to_json``); a public batched ``suggest`` would replace it."""
    storage = trial.storage
    if not isinstance(storage, JournalStorage):
        yield
        return
    from optuna.distributions import distribution_to_json

    logs: list[dict[str, Any]] = []
    trial_id = trial._trial_id
    write_now = storage.set_trial_param

    def set_trial_param(tid: int, name: str, value: float, distribution: Any) -> None:
        if tid != trial_id:
            return write_now(tid, name, value, distribution)
        logs.append(
            {
                "op_code": JournalOperation.SET_TRIAL_PARAM,
                "worker_id": storage._replay_result.worker_id,
                "trial_id": tid,
                "param_name": name,
                "param_value_internal": value,
                "distribution": distribution_to_json(distribution),
            }
        )

    storage.set_trial_param = set_trial_param  # this instance only, for this block
    try:
        yield
    finally:
        del storage.set_trial_param
        if logs:
            _append_and_replay(storage, logs)


def _plain_journal(storage: Any) -> bool:
    """A journal whose writes can be batched: not one that dumps snapshots on create."""
    from optuna.storages.journal._base import BaseJournalSnapshot

    return isinstance(storage, JournalStorage) and not isinstance(storage._backend, BaseJournalSnapshot)


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(tz=timezone.utc).isoformat(timespec="microseconds")


def ask_many(study: optuna.Study, n: int) -> list[optuna.Trial]:
    """``[study.ask() for _ in range(n)]``, the new trials created in one write on a journal file.

    Queued (WAITING) trials are taken first, as ``ask`` takes them. The rest are the very
    ``CREATE_TRIAL`` records ``JournalStorage.create_new_trial`` appends, in one ``append_logs``;
    records of one append are contiguous in the journal, so their trial ids are the last ``k``
    this process created. Then ``optuna.Trial(study, id)``, as ``ask`` does (the sampler's
    ``before_trial`` runs per trial). The sampler samples each trial when it is suggested, as
    after plain asks: TPE's ``constant_liar`` (Optuna 5's default) models RUNNING trials, but
    only by their params, and the batch's later trials have none yet, so what it reads is what
    it read after plain asks (tested: the same params and values). Uses
    ``Study._pop_waiting_trial_id``, ``_study_id``, ``_thread_local`` and the journal's private
    replay state; a public ``study.ask(n)`` would replace it.
    """
    storage = study._storage
    if not _plain_journal(storage):
        return [study.ask() for _ in range(n)]
    study._thread_local.cached_all_trials = None  # as ask: read the storage afresh
    ids: list[int] = []
    while len(ids) < n:
        trial_id = study._pop_waiting_trial_id()
        if trial_id is None:
            break
        ids.append(trial_id)
    new = n - len(ids)
    if new:
        worker = storage._replay_result.worker_id
        logs = [
            {
                "op_code": JournalOperation.CREATE_TRIAL,
                "worker_id": worker,
                "study_id": study._study_id,
                "datetime_start": _now(),
            }
            for _ in range(new)
        ]
        with storage._thread_lock:
            storage._backend.append_logs(logs)
            storage._sync_with_backend()
            last = storage._replay_result._last_created_trial_id_by_this_process
        ids.extend(range(last - new + 1, last + 1))
    return [optuna.Trial(study, trial_id) for trial_id in ids]


def tell_many(study: optuna.Study, items: list[tuple[optuna.Trial, float | None, TrialState | None]]) -> set[int]:
    """``study.tell(trial, value, state=state)`` for every item, the finished states written in
    one append on a journal file. Returns the numbers of the trials that refused (finished by
    another worker meanwhile: ``tell`` raises for those); the others are told exactly as alone.

    Each ``study.tell`` runs whole (its checks, ``sampler.after_trial``, the pruner's view);
    only its last step, ``storage.set_trial_state_values``, is collected for this instance and
    these trials, as the very record it appends, and all are appended at the end. Nothing reads
    these trials' states in between. Uses the record format of
    ``JournalStorage.set_trial_state_values``; a public batched tell would replace it.
    """
    storage = study._storage
    if not _plain_journal(storage):
        return _tell_each(study, items)
    with _state_writes_collected(storage, {trial._trial_id for trial, _, _ in items}) as logs:
        refused = _tell_each(study, items)
    if logs:
        try:
            _append_and_replay(storage, logs)
        except UpdateFinishedTrialError:  # finished elsewhere between its tell and the write
            ours = {log["trial_id"]: log for log in logs}
            for trial, _, _ in items:
                if trial._trial_id in ours and not _holds(storage.get_trial(trial._trial_id), ours[trial._trial_id]):
                    refused.add(trial.number)
    return refused


def _tell_each(study: optuna.Study, items: list[tuple[optuna.Trial, float | None, TrialState | None]]) -> set[int]:
    """``study.tell`` for each item; the numbers of those another worker had finished."""
    refused: set[int] = set()
    for trial, value, state in items:
        try:
            study.tell(trial, value, state=state)
        except (UpdateFinishedTrialError, ValueError):  # "Cannot tell a FAIL trial": finished elsewhere
            if not study._storage.get_trial(trial._trial_id).state.is_finished():
                raise
            refused.add(trial.number)
    return refused


@contextlib.contextmanager
def _state_writes_collected(storage: JournalStorage, trial_ids: set[int]) -> Iterator[list[dict[str, Any]]]:
    """Within the block, these trials' finished states are collected as the records
    ``set_trial_state_values`` appends, not written; other writes go through."""
    logs: list[dict[str, Any]] = []
    write_now = storage.set_trial_state_values

    def set_trial_state_values(trial_id: int, state: TrialState, values: Any = None) -> bool:
        if trial_id not in trial_ids or not state.is_finished():
            return write_now(trial_id, state, values)
        logs.append(
            {
                "op_code": JournalOperation.SET_TRIAL_STATE_VALUES,
                "worker_id": storage._replay_result.worker_id,
                "trial_id": trial_id,
                "state": state,
                "values": values,
                "datetime_complete": _now(),
            }
        )
        return True

    storage.set_trial_state_values = set_trial_state_values  # this instance only, for this block
    try:
        yield logs
    finally:
        del storage.set_trial_state_values


def _holds(stored: Any, log: dict[str, Any]) -> bool:
    """Whether the stored trial was finished by this record, not by another worker's (the
    journal replays a time as local and naive)."""
    from datetime import datetime

    complete = datetime.fromisoformat(log["datetime_complete"]).astimezone().replace(tzinfo=None)
    return stored.state == log["state"] and stored.datetime_complete == complete


def bounded_view(study: optuna.Study, bound: Callable[[list[Any], Any, bool], list[Any]], size: int) -> Any:
    """The study as a sampler should see it: ``_get_trials`` answers ``bound(trials, states,
    minimize)`` once the study holds more than ``size`` trials (single-objective only; a
    multi-objective study is passed whole), everything else is the study's.

    TPE reads past trials through the private ``Study._get_trials`` at every suggestion, so its
    cost grows with the study; a public "condition on these trials" option would replace this.
    """
    return _BoundedView(study, bound, size)


class _BoundedView:
    """A study whose ``_get_trials`` is bounded (see :func:`bounded_view`)."""

    def __init__(self, study: optuna.Study, bound: Callable[[list[Any], Any, bool], list[Any]], size: int) -> None:
        self._study, self._bound, self._size = study, bound, size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[Any]:
        study = self._study
        if deepcopy or len(study.directions) > 1:
            return study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        # straight from the storage: Study's own cache filters every trial by state in Python
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False, states=states)
        if len(trials) <= self._size:
            return trials
        return self._bound(trials, states, study.direction == optuna.study.StudyDirection.MINIMIZE)


class IndexedJournalStorage(JournalStorage):
    """Optuna's journal storage, listing a study's trials in time that does not grow with the
    finished ones.

    ``JournalStorage.get_all_trials`` tests every trial's state at every call (~0.6 µs a trial:
    2 ms at trial 3,000), and one ask with TPE calls it several times. A finished trial never
    changes (the journal's replay refuses every update to one), so for each study and set of
    states this keeps the finished trials up to the first unfinished one, and looks only at
    the trials from there on. The answer is the list Optuna's would be (tested), in number
    order. It reads the replay's private ``_trials`` and ``_study_id_to_trial_ids``; Optuna
    caching its own listing (as ``_CachedStorage`` does for RDB storages) would replace it.
    """

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Any = None) -> list[Any]:
        if deepcopy:
            return super().get_all_trials(study_id, deepcopy=True, states=states)
        with self._thread_lock:
            self._sync_with_backend()
            replay = self._replay_result
            if study_id not in replay._study_id_to_trial_ids:  # Optuna's error, outside its lock
                return replay.get_all_trials(study_id, states)
            ids, trials = replay._study_id_to_trial_ids[study_id], replay._trials
            index = self.__dict__.setdefault("_listing", {})
            key = (id(replay), study_id, None if states is None else frozenset(states))
            frontier, finished = index.get(key, (0, []))
            while frontier < len(ids) and (trial := trials[ids[frontier]]).state.is_finished():
                if states is None or trial.state in states:
                    finished.append(trial)
                frontier += 1
            index[key] = (frontier, finished)
            tail = (trials[i] for i in ids[frontier:])
            return finished + [t for t in tail if states is None or t.state in states]
