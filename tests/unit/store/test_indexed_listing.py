"""IndexedJournalStorage lists a study's trials exactly as Optuna's JournalStorage does."""

from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from meminject.store._optuna import IndexedJournalStorage
from meminject.store._recovery import HeartbeatJournalStorage

STATES = [
    None,
    (TrialState.COMPLETE,),
    (TrialState.WAITING,),
    (TrialState.RUNNING,),
    (TrialState.COMPLETE, TrialState.PRUNED),
    (TrialState.FAIL,),
]


def _listing(storage, study_id: int, states) -> list[tuple]:
    return [
        (t.number, t.state, t.values, t.params, t.user_attrs)
        for t in storage.get_all_trials(study_id, deepcopy=False, states=states)
    ]


def _same_as_optuna(path: Path, storages: list, study_id: int) -> None:
    reference = JournalStorage(JournalFileBackend(str(path)))  # a fresh reader: Optuna's own answer
    for states in STATES:
        expected = _listing(reference, study_id, states)
        for storage in storages:
            assert _listing(storage, study_id, states) == expected, states


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_workers_listing_while_trials_start_finish_and_queue_out_of_order(tmp_path: Path, seed: int) -> None:
    """Two indexed storages on one journal (two workers), trials finishing out of order, queued
    ones, failures and prunes: after every step each lists what Optuna's storage lists."""
    path = tmp_path / "optuna.journal"
    workers = [IndexedJournalStorage(JournalFileBackend(str(path))) for _ in range(2)]
    studies = [optuna.create_study(study_name="s", storage=workers[0], direction="maximize")]
    studies.append(optuna.load_study(study_name="s", storage=workers[1]))
    study_id = studies[0]._study_id
    rng = random.Random(seed)
    running: list[tuple[int, optuna.Trial]] = []
    for step in range(120):
        who = rng.randrange(2)
        action = rng.random()
        if action < 0.1:
            studies[who].enqueue_trial({"x": rng.random()})
        elif action < 0.55 or not running:
            trial = studies[who].ask()
            trial.suggest_float("x", 0, 1)
            trial.set_user_attr("step", step)
            running.append((who, trial))
        else:
            owner, trial = running.pop(rng.randrange(len(running)))  # any running trial, not the oldest
            state = rng.choice([TrialState.COMPLETE] * 3 + [TrialState.PRUNED, TrialState.FAIL])
            studies[owner].tell(trial, rng.random() if state == TrialState.COMPLETE else None, state=state)
        _same_as_optuna(path, workers, study_id)
    assert any(t.state == TrialState.RUNNING for t in studies[0].trials), "the frontier was held back"


def test_the_heartbeat_journal_lists_through_the_index(tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    storage = HeartbeatJournalStorage(JournalFileBackend(str(path)), heartbeat_interval=60)
    study = optuna.create_study(storage=storage)
    first = study.ask()
    for _ in range(5):
        study.tell(study.ask(), 1.0)
    assert [
        t.number for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.COMPLETE,))
    ] == [1, 2, 3, 4, 5]
    study.tell(first, 2.0)  # the trial holding the frontier back finishes: it is listed in its place
    _same_as_optuna(path, [storage], study._study_id)
    assert storage.get_all_trials(study._study_id, deepcopy=False)[0].number == 0


def test_a_missing_study_is_optunas_error(tmp_path: Path) -> None:
    storage = IndexedJournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    with pytest.raises(KeyError):
        storage.get_all_trials(123, deepcopy=False)
