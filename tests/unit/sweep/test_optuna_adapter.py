"""The Optuna adapter's batched user attributes store what the public calls store."""

from __future__ import annotations

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages.journal import JournalFileBackend, JournalStorage

from meminject.sweep._optuna import set_user_attrs

ATTRS = {"mean_gain": 0.0123, "site.injection.layer": 3, "meminject.key": "abc", "nested": {"a": [1, 2]}, "none": None}


def _journal(path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_batched_attrs_equal_the_public_calls(tmp_path, kind):
    storage = _journal(tmp_path / "j.log") if kind == "journal" else f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(storage=storage, study_name="s")
    one, other = study.ask(), study.ask()
    set_user_attrs(one, ATTRS)
    for key, value in ATTRS.items():
        other.set_user_attr(key, value)
    assert one.user_attrs == other.user_attrs == ATTRS  # the live trial's view
    reopened = optuna.load_study(study_name="s", storage=_journal(tmp_path / "j.log") if kind == "journal" else storage)
    stored = {t.number: t.user_attrs for t in reopened.get_trials()}
    assert stored[one.number] == stored[other.number] == ATTRS  # what another process replays


def test_a_trial_finished_elsewhere_refuses_and_the_storage_stays_usable(tmp_path):
    mine = optuna.create_study(storage=_journal(tmp_path / "j.log"), study_name="s")
    theirs = optuna.load_study(study_name="s", storage=_journal(tmp_path / "j.log"))
    trial, later = mine.ask(), mine.ask()
    theirs.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # another worker failed it as stale
    with pytest.raises(UpdateFinishedTrialError):
        set_user_attrs(trial, ATTRS)
    set_user_attrs(later, {"ok": 1})  # no refused record is left to break the next write
    mine.tell(later, 1.0)
    assert optuna.load_study(study_name="s", storage=_journal(tmp_path / "j.log")).trials[later.number].user_attrs == {
        "ok": 1
    }
