"""The Optuna adapter's batched user attributes store what the public calls store."""

from __future__ import annotations

import contextlib

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages.journal import JournalFileBackend, JournalStorage

from meminject.store._optuna import set_user_attrs

ATTRS = {"mean_gain": 0.0123, "site.injection.layer": 3, "meminject.key": "abc", "nested": {"a": [1, 2]}, "none": None}


def _count_appends(monkeypatch) -> list[int]:
    """The size of each journal append from now on (a list that fills as they happen)."""
    appends: list[int] = []
    real = JournalFileBackend.append_logs

    def counted(self, logs):
        appends.append(len(logs))
        return real(self, logs)

    monkeypatch.setattr(JournalFileBackend, "append_logs", counted)
    return appends


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


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_params_in_one_write_store_what_suggest_stores_in_one_append(tmp_path, kind, monkeypatch):
    """Two TPE studies with one seed: one suggests inside the block, one plainly. Every trial
    gets the same params and distributions; on a journal each trial's params take one append."""
    from meminject.store._optuna import params_in_one_write

    def run(name: str, batched: bool) -> list:
        storage = _journal(tmp_path / f"{name}.log") if kind == "journal" else f"sqlite:///{tmp_path / name}.db"
        study = optuna.create_study(storage=storage, study_name=name, sampler=optuna.samplers.TPESampler(seed=1))
        for _ in range(14):  # past TPE's 10 random startup trials
            trial = study.ask()
            with params_in_one_write(trial) if batched else contextlib.nullcontext():
                x = trial.suggest_float("x", -3, 3)
                k = trial.suggest_int("k", 1, 15)
                c = trial.suggest_categorical("c", ["unembed", "embed", "layer"])
            assert trial.params == {"x": x, "k": k, "c": c}  # the live trial's own view
            study.tell(trial, (x - 1) ** 2 + k / 10 + (c == "embed"))
        reopened = optuna.load_study(
            study_name=name, storage=_journal(tmp_path / f"{name}.log") if kind == "journal" else storage
        )
        return [(t.params, t.distributions, t.value) for t in reopened.get_trials()]

    appends = _count_appends(monkeypatch)
    batched = run("b", True)
    n_batched = len(appends)
    appends.clear()
    plain = run("p", False)
    assert batched == plain
    if kind == "journal":  # the plain path writes each of the 3 params alone: 2 more appends per trial
        assert len(appends) - n_batched == 2 * 14


def test_many_trials_attrs_in_one_write_and_a_trial_finished_elsewhere_is_refused_alone(tmp_path, monkeypatch):
    """A stacked pass's results: every trial's attributes in one append; the one another worker
    failed meanwhile is refused (returned), the others hold exactly their attributes."""
    from meminject.store._optuna import set_many_user_attrs

    mine = optuna.create_study(storage=_journal(tmp_path / "j.log"), study_name="s")
    theirs = optuna.load_study(study_name="s", storage=_journal(tmp_path / "j.log"))
    trials = [mine.ask() for _ in range(4)]
    theirs.tell(trials[1].number, state=optuna.trial.TrialState.FAIL)  # failed as stale elsewhere
    appends = _count_appends(monkeypatch)
    items = [(t, {**ATTRS, "n": t.number}) for t in trials]
    assert set_many_user_attrs(items) == {trials[1].number}
    assert appends == [4 * (len(ATTRS) + 1)]  # one write
    for t in (trials[0], trials[2], trials[3]):
        mine.tell(t, 0.5)
    stored = optuna.load_study(study_name="s", storage=_journal(tmp_path / "j.log")).trials
    assert [stored[t.number].user_attrs for t in trials] == [
        {**ATTRS, "n": 0},
        {},
        {**ATTRS, "n": 2},
        {**ATTRS, "n": 3},
    ]
    assert trials[2].user_attrs == {**ATTRS, "n": 2}  # the live trial's view


def _history(storage_path, name: str) -> list:
    study = optuna.load_study(study_name=name, storage=_journal(storage_path))
    return [(t.number, t.state, t.values, t.params, t.distributions, t.user_attrs) for t in study.get_trials()]


def test_ask_many_and_tell_many_store_what_ask_and_tell_store_in_one_append_each(tmp_path, monkeypatch):
    """Two TPE studies with one seed, 4 rounds of 6 stacked trials (past the 10 random
    startup trials): one asks and tells through the adapter, one plainly. The same trials,
    params, values and states (a pruned one among them); the adapter's rounds take one append
    to create and one to tell."""
    from meminject.store._optuna import ask_many, tell_many

    def run(name: str, batched: bool) -> tuple[list, list[int]]:
        study = optuna.create_study(
            storage=_journal(tmp_path / f"{name}.log"), study_name=name, sampler=optuna.samplers.TPESampler(seed=3)
        )
        study.enqueue_trial({"x": 0.5, "k": 2})  # a queued point is taken first, as ask takes it
        appends = _count_appends(monkeypatch)
        sizes = []
        for _ in range(4):
            before = len(appends)
            trials = ask_many(study, 6) if batched else [study.ask() for _ in range(6)]
            sizes.append(appends[before:])
            for t in trials:
                t.suggest_float("x", -3, 3)
                t.suggest_int("k", 1, 15)
            tells = [
                (t, None, optuna.trial.TrialState.PRUNED) if t.number % 5 == 4 else (t, (t.params["x"] - 1) ** 2, None)
                for t in trials
            ]
            before = len(appends)
            if batched:
                assert tell_many(study, tells) == set()
            else:
                for t, v, s in tells:
                    study.tell(t, v, state=s)
            sizes.append(appends[before:])
        monkeypatch.undo()
        return _history(tmp_path / f"{name}.log", name), sizes

    batched, batched_sizes = run("b", True)
    plain, _ = run("p", False)
    assert batched == plain
    assert len(batched) == 24
    assert {state for _, state, *_ in batched} == {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    creates, tells = batched_sizes[0::2], batched_sizes[1::2]
    assert creates[1:] == [[6]] * 3  # after the first round's queued trial: one create append a round
    assert tells == [[6]] * 4  # one tell append a round


def test_tell_many_refuses_a_trial_finished_elsewhere_alone(tmp_path, monkeypatch):
    """One trial failed by another worker before the tells, one between the tells and the
    write: both are refused (returned) and keep the other worker's state; the rest are told."""
    from meminject.store import _optuna
    from meminject.store._optuna import ask_many, tell_many

    mine = optuna.create_study(storage=_journal(tmp_path / "j.log"), study_name="s")
    theirs = optuna.load_study(study_name="s", storage=_journal(tmp_path / "j.log"))
    trials = ask_many(mine, 4)
    theirs.tell(trials[1].number, state=optuna.trial.TrialState.FAIL)
    real = _optuna._append_and_replay

    def racing(storage, logs):
        theirs.tell(trials[2].number, state=optuna.trial.TrialState.FAIL)  # just before our write
        return real(storage, logs)

    monkeypatch.setattr(_optuna, "_append_and_replay", racing)
    assert tell_many(mine, [(t, float(t.number), None) for t in trials]) == {trials[1].number, trials[2].number}
    stored = optuna.load_study(study_name="s", storage=_journal(tmp_path / "j.log")).trials
    assert [(t.state.name, t.value) for t in stored] == [
        ("COMPLETE", 0.0),
        ("FAIL", None),
        ("FAIL", None),
        ("COMPLETE", 3.0),
    ]
