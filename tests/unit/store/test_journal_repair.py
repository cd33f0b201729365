"""A journal file whose last record was torn (kill, power loss, full disk) is repaired.

Every test builds or cuts a real Optuna journal and reopens it with Optuna: after a repair
the trials complete before the torn record are all there, and, the bug being fixed, the next
append is not fused onto the fragment (the file opens again after more trials).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage
from optuna.trial import TrialState

from meminject.store._journal import repair_torn_journal

optuna.logging.set_verbosity(optuna.logging.WARNING)
STUDY = "torn"


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0, 1) + len(trial.suggest_categorical("c", ["a", "bb"]))


def _run(path: Path, n_trials: int) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(
        study_name=STUDY,
        storage=storage,
        load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(seed=len(path.read_bytes()) if path.exists() else 0),
    )
    study.optimize(_objective, n_trials=n_trials)
    return study


def _trials(path: Path) -> list[tuple[int, TrialState, dict[str, Any], float | None]]:
    study = optuna.load_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(path))))
    return [(t.number, t.state, t.params, t.value) for t in study.get_trials(deepcopy=False)]


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int, list[Any]]:
    """(the bytes of a 5-trial journal, where its last record begins, the trials before it)."""
    path = tmp_path_factory.mktemp("built") / "optuna.journal"
    _run(path, 5)
    data = path.read_bytes()
    last = data[: len(data) - 1].rfind(b"\n") + 1
    assert json.loads(data[last:])["state"] == TrialState.COMPLETE.value  # trial 4 told COMPLETE
    path.write_bytes(data[:last])
    before = _trials(path)
    assert [s for _, s, _, _ in before] == [TrialState.COMPLETE] * 4 + [TrialState.RUNNING]
    return data, last, before


def _backups(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.torn-*.bak"))


def test_without_repair_an_append_after_a_torn_record_breaks_the_journal(tmp_path: Path, journal: Any) -> None:
    # The bug itself, in Optuna as installed: if this stops failing, Optuna has fixed it.
    data, last, _ = journal
    path = tmp_path / "optuna.journal"
    path.write_bytes(data[: last + 20])
    with pytest.raises(ValueError):  # json.JSONDecodeError
        _run(path, 2)
        _trials(path)


def test_every_cut_inside_the_last_record_is_repaired_and_the_journal_takes_appends_again(
    tmp_path: Path, journal: Any
) -> None:
    data, last, before = journal
    for cut in range(last + 1, len(data) - 1):  # every byte of the last record, its final brace and newline excepted
        directory = tmp_path / str(cut)
        directory.mkdir()
        path = directory / "optuna.journal"
        path.write_bytes(data[:cut])
        message = repair_torn_journal(path)
        assert message is not None and f"cut {cut - last} bytes" in message, (cut, message)
        assert path.read_bytes() == data[:last], cut
        (backup,) = _backups(directory)
        assert backup.read_bytes() == data[:cut] and str(backup) in message
        assert _trials(path) == before, cut
        assert repair_torn_journal(path) is None  # repaired once
        if cut in (last + 1, len(data) - 2) or cut % 7 == 0:  # the bug: the next append must not fuse
            _run(path, 2)
            after = _trials(path)
            assert after[:5] == before and [s for _, s, _, _ in after[5:]] == [TrialState.COMPLETE] * 2, cut


def test_a_healthy_journal_is_left_byte_identical_without_a_backup(tmp_path: Path, journal: Any) -> None:
    data, _, _ = journal
    path = tmp_path / "optuna.journal"
    path.write_bytes(data)
    stat = path.stat()
    assert repair_torn_journal(path) is None
    assert path.read_bytes() == data and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert _backups(tmp_path) == [] and not Path(f"{path}.lock").exists()


def test_a_missing_or_empty_journal_needs_no_repair(tmp_path: Path) -> None:
    assert repair_torn_journal(tmp_path / "missing.journal") is None
    assert not (tmp_path / "missing.journal").exists()
    (tmp_path / "empty.journal").write_bytes(b"")
    assert repair_torn_journal(str(tmp_path / "empty.journal")) is None
    assert _backups(tmp_path) == []


@pytest.mark.parametrize(
    "tail",
    [b"\0" * 300, b"\n", b'{"op_code": 5, "worker_id": "w"', b'{"op_code":\n'],
    ids=["zeros", "blank-line", "no-newline", "broken-line"],
)
def test_junk_after_the_last_record_is_cut(tmp_path: Path, journal: Any, tail: bytes) -> None:
    # Zeros: what a file system can leave at the end of a file after a power loss.
    data, _, _ = journal
    path = tmp_path / "optuna.journal"
    path.write_bytes(data + tail)
    assert f"cut {len(tail)} bytes" in (repair_torn_journal(path) or "")
    assert path.read_bytes() == data


def test_a_record_already_fused_onto_the_torn_one_at_the_end_is_cut_as_optuna_never_read_it(
    tmp_path: Path, journal: Any
) -> None:
    data, last, before = journal
    path = tmp_path / "optuna.journal"
    path.write_bytes(data[: last + 30] + data[last:])  # fragment + a whole record, one line
    assert _trials(path) == before  # Optuna skips the fused line: the record was never read
    assert repair_torn_journal(path) is not None
    assert path.read_bytes() == data[:last]


def test_a_record_larger_than_the_read_window_is_judged_whole(tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(path))))
    study.set_user_attr("big", "y" * 300_000)  # one record of ~300 kB, more than the window
    data = path.read_bytes()
    assert repair_torn_journal(path) is None
    path.write_bytes(data[:-1000])
    assert repair_torn_journal(path) is not None
    assert path.read_bytes() == data[: data[:-1].rfind(b"\n") + 1]
    assert optuna.load_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(path)))).user_attrs == {}


def test_workers_repairing_at_once_repair_once(tmp_path: Path, journal: Any) -> None:
    data, last, _ = journal
    path = tmp_path / "optuna.journal"
    path.write_bytes(data[: last + 40])
    start = threading.Barrier(8)
    results: list[str | None] = []

    def worker() -> None:
        start.wait()
        results.append(repair_torn_journal(path))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r is not None for r in results) == 1 and len(_backups(tmp_path)) == 1
    assert path.read_bytes() == data[:last]


def test_the_repair_waits_for_the_lock_optuna_appends_under(tmp_path: Path, journal: Any) -> None:
    data, last, _ = journal
    path = tmp_path / "optuna.journal"
    path.write_bytes(data[: last + 40])
    lock = JournalFileSymlinkLock(str(path))  # JournalFileBackend's default lock
    lock.acquire()
    done: list[str | None] = []
    thread = threading.Thread(target=lambda: done.append(repair_torn_journal(path)))
    thread.start()
    time.sleep(0.3)
    assert not done and path.read_bytes() == data[: last + 40]  # an append could be under way
    lock.release()
    thread.join(timeout=10)
    assert done and done[0] is not None and path.read_bytes() == data[:last]


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 256 kB tmpfs (needs root and mount; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        shutil.which("mount") is None
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_journal_cut_by_a_full_disk_is_repaired_once_space_is_freed(small_disk: Path) -> None:
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * 150_000)  # what the user deletes to free space
    path = small_disk / "optuna.journal"
    # Optuna's optimize masks an error in tell with "AssertionError: Should not reach.".
    with pytest.raises((OSError, AssertionError)) as full:
        for _ in range(2000):
            _run(path, 5)
    error: BaseException | None = full.value
    while error is not None and getattr(error, "errno", None) != errno.ENOSPC:
        error = error.__context__
    assert error is not None, full.value
    torn = path.read_bytes()
    complete = [t for t in _trials(path) if t[1] is TrialState.COMPLETE]
    assert complete and not torn.endswith(b"\n")  # Optuna still reads it; the next append would fuse
    with pytest.raises(OSError):  # no room for the backup: the journal is left alone
        repair_torn_journal(path)
    assert path.read_bytes() == torn and _backups(small_disk) == []
    ballast.unlink()
    assert repair_torn_journal(path) is not None
    assert [t for t in _trials(path) if t[1] is TrialState.COMPLETE] == complete
    _run(path, 3)
    assert len([t for t in _trials(path) if t[1] is TrialState.COMPLETE]) == len(complete) + 3


def test_a_partial_write_as_a_full_disk_leaves_it_is_repaired(tmp_path: Path, journal: Any) -> None:
    # Without a small disk to fill: the half-written record a failed write() leaves behind.
    data, _, before = journal
    path = tmp_path / "optuna.journal"
    path.write_bytes(data)
    with open(path, "ab") as f:
        f.write(b'{"op_code":6,"worker_id":"dead","trial_id":4,"state":1,"val')
    assert repair_torn_journal(os.fspath(path)) is not None
    assert path.read_bytes() == data
    _run(path, 2)
    assert len(_trials(path)) == len(before) + 2
