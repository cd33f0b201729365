"""HeartbeatJournalStorage held to Optuna's own contracts.

* Optuna's storage test suite (``optuna.testing.pytest_storages.StorageTestCase``) run
  against it: it must stay a faithful ``JournalStorage``.
* Optuna's heartbeat tests (``tests/storages_tests/test_heartbeat.py`` upstream, written
  there for RDB and Redis) adapted to it; instead of sleeping past the grace period they move
  the storage's clock forward, so the whole file runs in a few seconds.
* Time zones: a trial that never beat is judged by its start time, which Optuna hands back
  as a naive local datetime; the verdict must not depend on the machine's time zone.
"""

from __future__ import annotations

import os
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator
from unittest.mock import Mock

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.storages.journal import JournalFileBackend
from optuna.testing.pytest_storages import StorageTestCase
from optuna.trial import FrozenTrial, TrialState

from meminject.store import _recovery as recovery
from meminject.store._recovery import HeartbeatJournalStorage

INTERVAL, GRACE = 1, 2
# "heartbeat is supposed to be used with optimize" (we ask/tell by hand) and the
# experimental-feature warnings are expected here; they are checked on purpose below.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]

_real_time = time.time


class _Clock:
    """Stands in for the ``time`` module inside meminject.store._recovery: real time plus an offset."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return _real_time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def __getattr__(self, name: str) -> Any:  # sleep, monotonic, ... stay real
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(recovery, "time", fake)
    return fake


def _storage(tmp_path: Any, **kwargs: Any) -> HeartbeatJournalStorage:
    kwargs.setdefault("heartbeat_interval", INTERVAL)
    kwargs.setdefault("grace_period", GRACE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return HeartbeatJournalStorage(JournalFileBackend(str(tmp_path / "journal.log")), **kwargs)


class TestOptunaStorageSuite(StorageTestCase):
    """Optuna's own storage tests, with the heartbeat journal storage as the storage."""

    @pytest.fixture
    def storage(self, tmp_path: Any) -> HeartbeatJournalStorage:
        return _storage(tmp_path)


# ------------------------------------------------------------- Optuna's heartbeat contract


@pytest.mark.parametrize(
    "kwargs", [{"heartbeat_interval": 0}, {"heartbeat_interval": -1}, {"grace_period": 0}, {"grace_period": -1}]
)
def test_invalid_heartbeat_interval_and_grace_period(tmp_path: Any, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        _storage(tmp_path, **kwargs)


def test_a_heartbeat_storage_warns_it_is_experimental_like_rdb_storage(tmp_path: Any) -> None:
    with pytest.warns(optuna.exceptions.ExperimentalWarning, match="heartbeat_interval"):
        HeartbeatJournalStorage(JournalFileBackend(str(tmp_path / "j.log")), heartbeat_interval=1, grace_period=2)


@pytest.mark.parametrize("grace_period", [None, 5])
def test_fail_stale_trials_grace_period_and_its_default(tmp_path: Any, clock: _Clock, grace_period: int | None) -> None:
    storage = _storage(tmp_path, heartbeat_interval=3, grace_period=grace_period)
    grace = 2 * 3 if grace_period is None else grace_period  # RDBStorage's default
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    clock.advance(grace - 0.5)
    fail_stale_trials(study)
    assert study.trials[0].state is TrialState.RUNNING
    storage.record_heartbeat(trial._trial_id)  # a recent beat keeps it alive
    clock.advance(grace - 0.5)
    fail_stale_trials(study)
    assert study.trials[0].state is TrialState.RUNNING
    clock.advance(1.0)
    fail_stale_trials(study)
    assert study.trials[0].state is TrialState.FAIL


def test_fail_stale_trials_with_optimize_fails_only_this_studys_stale_trials(tmp_path: Any, clock: _Clock) -> None:
    storage = _storage(tmp_path)
    study1, study2 = optuna.create_study(storage=storage), optuna.create_study(storage=storage)
    trial1, trial2 = study1.ask(), study2.ask()
    storage.record_heartbeat(trial1._trial_id)
    storage.record_heartbeat(trial2._trial_id)
    clock.advance(GRACE + 1)
    assert study1.trials[0].state is TrialState.RUNNING
    study1.optimize(lambda _: 1.0, n_trials=1)
    assert study1.trials[0].state is TrialState.FAIL
    assert study1.trials[1].state is TrialState.COMPLETE
    assert study2.trials[0].state is TrialState.RUNNING


def test_get_stale_trial_ids(tmp_path: Any, clock: _Clock) -> None:
    storage = _storage(tmp_path)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    assert storage._get_stale_trial_ids(study._study_id) == []
    clock.advance(GRACE + 1)
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]
    study.tell(trial, 1.0)  # finished trials are never stale
    assert storage._get_stale_trial_ids(study._study_id) == []


def test_the_stale_trial_callback_gets_the_failed_trial(tmp_path: Any, clock: _Clock) -> None:
    def check(study: optuna.Study, trial: FrozenTrial) -> None:
        assert study.user_attrs["test"] == "A"
        assert trial.user_attrs["test"] == "B"
        assert trial.state is TrialState.FAIL

    callback = Mock(wraps=check)
    storage = _storage(tmp_path, heartbeat_stale_trial_callback=callback)
    study = optuna.create_study(storage=storage)
    study.set_user_attr("test", "A")  # Optuna 5 has no public system attrs; upstream used them
    trial = study.ask()
    trial.set_user_attr("test", "B")
    storage.record_heartbeat(trial._trial_id)
    clock.advance(GRACE + 1)
    study.optimize(lambda _: 1.0, n_trials=1)
    callback.assert_called_once()
    fail_stale_trials(study)  # already failed: not called again
    callback.assert_called_once()


@pytest.mark.parametrize("max_retry", [None, 0, 1])
@pytest.mark.parametrize("inherit_intermediate_values", [False, True])
def test_a_retried_stale_trial_gets_the_same_params(
    tmp_path: Any, clock: _Clock, max_retry: int | None, inherit_intermediate_values: bool
) -> None:
    retry = RetryHeartbeatStaleTrialCallback(
        max_retry=max_retry, inherit_intermediate_values=inherit_intermediate_values
    )
    storage = _storage(tmp_path, heartbeat_stale_trial_callback=retry)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    trial.suggest_float("x", -1, 1)
    trial.set_user_attr("u", 7)
    trial.report(0.5, 1)
    storage.record_heartbeat(trial._trial_id)
    clock.advance(GRACE + 1)
    study.optimize(lambda _: 1.0, n_trials=1)
    first, second = study.trials[0], study.trials[1]
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(second) == (None if max_retry == 0 else 0)
    if max_retry != 0:
        assert second.params == first.params
        assert second.distributions == first.distributions
        assert second.user_attrs == first.user_attrs
        assert second.intermediate_values == (first.intermediate_values if inherit_intermediate_values else {})


def test_a_trial_failing_again_and_again_is_retried_max_retry_times(tmp_path: Any, clock: _Clock) -> None:
    storage = _storage(tmp_path, heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    study = optuna.create_study(storage=storage)
    for _ in range(5):
        trial = study.ask()
        storage.record_heartbeat(trial._trial_id)
        clock.advance(GRACE + 1)
        fail_stale_trials(study)
    trials = study.trials
    assert len(trials) == 6
    assert "failed_trial" not in trials[0].system_attrs
    assert [trials[i].system_attrs["retry_history"] for i in (1, 2, 3)] == [[0], [0, 1], [0, 1, 2]]
    assert all(trials[i].system_attrs["failed_trial"] == 0 for i in (1, 2, 3))
    assert "failed_trial" not in trials[4].system_attrs  # retries used up: a fresh trial
    assert trials[5].system_attrs["failed_trial"] == 4


@pytest.mark.parametrize("recovery_callback", ["optuna", "meminject"])
def test_a_retry_is_not_stale_before_its_first_beat(tmp_path: Any, clock: _Clock, recovery_callback: str) -> None:
    # The retry inherits the dead trial's system attrs, its old heartbeat among them.
    callback = RetryHeartbeatStaleTrialCallback() if recovery_callback == "optuna" else recovery.StaleTrialRecovery()
    storage = _storage(tmp_path, heartbeat_stale_trial_callback=callback)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    clock.advance(-(GRACE + 1))  # its one beat, GRACE + 1 seconds ago
    storage.record_heartbeat(trial._trial_id)
    clock.advance(GRACE + 1)
    # A worker judged it stale (by hand here: the fake clock cannot age its real start time).
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    callback(study, study.trials[0])
    retry = study.ask()  # pops the re-queued point; its worker has not beaten yet
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(study.trials[retry.number]) == 0
    fail_stale_trials(study)
    assert study.trials[retry.number].state is TrialState.RUNNING
    if recovery_callback == "meminject":
        assert recovery.HEARTBEAT_ATTR not in study.trials[retry.number].system_attrs


def test_a_beat_for_a_finished_trial_is_ignored(tmp_path: Any) -> None:
    storage = _storage(tmp_path)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    study.tell(trial, 1.0)
    storage.record_heartbeat(trial._trial_id)  # the other worker failed it / it was told meanwhile
    assert study.trials[0].state is TrialState.COMPLETE


# ------------------------------------------------------- never-beaten trials and time zones

ZONES = ["UTC", "America/New_York", "America/St_Johns", "Asia/Tokyo", "Asia/Kolkata", "Australia/Adelaide"]


@contextmanager
def _time_zone(name: str) -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        if name != "UTC" and time.localtime(1730611800).tm_gmtoff == 0:
            pytest.skip(f"time zone {name} is not installed here")
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.fixture(params=ZONES)
def zone(request: pytest.FixtureRequest) -> Iterator[str]:
    with _time_zone(request.param):
        yield request.param


def test_a_trial_that_never_beat_is_judged_by_its_start_time_in_any_time_zone(
    tmp_path: Any, clock: _Clock, zone: str
) -> None:
    # Its worker died between asking for the trial and its first beat: only the start says so.
    storage = _storage(tmp_path)
    study = optuna.create_study(storage=storage)
    study.ask()
    fail_stale_trials(study)
    assert study.trials[0].state is TrialState.RUNNING, f"a trial started just now is stale under TZ={zone}"
    clock.advance(GRACE - 0.5)
    fail_stale_trials(study)
    assert study.trials[0].state is TrialState.RUNNING, f"a trial started {GRACE - 0.5}s ago is stale under TZ={zone}"
    clock.advance(1.5)
    fail_stale_trials(study)
    assert study.trials[0].state is TrialState.FAIL, f"a dead trial {GRACE + 1}s old is not stale under TZ={zone}"


def test_a_start_in_the_repeated_hour_of_a_dst_change_counts_as_the_later_instant() -> None:
    # 01:30 happens twice in New York on 2024-11-03 (EDT, then EST). A naive start there is
    # read as the later one, so a live trial is never taken for an hour older than it is.
    with _time_zone("America/New_York"):
        later = datetime(2024, 11, 3, 6, 30, tzinfo=timezone.utc).timestamp()
        assert recovery._start_epoch(datetime(2024, 11, 3, 1, 30)) == later
        assert recovery._start_epoch(datetime(2024, 11, 3, 6, 30, tzinfo=timezone.utc)) == later
        assert (
            recovery._start_epoch(datetime(2024, 7, 1, 12, 0))
            == datetime(2024, 7, 1, 16, 0, tzinfo=timezone.utc).timestamp()
        )


def test_recovery_imports_first_without_an_import_cycle() -> None:
    # recovery imports meminject.store._optuna, which runs meminject.store's __init__ first.
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "import meminject.store._recovery"], check=True, timeout=60)


def test_recovery_uses_no_private_optuna_name() -> None:
    # Optuna's private API is confined to meminject.store._optuna; recovery goes through it.
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(recovery))
    private_imports = [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module
        and node.module.startswith("optuna")
        and any(part.startswith("_") for part in node.module.split("."))
    ]
    # _get_stale_trial_ids is the BaseHeartbeat hook the storage must implement, not a use.
    private_attrs = [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and node.attr != "_get_stale_trial_ids"
    ]
    assert private_imports == [] and private_attrs == []
