"""Journal damage beyond a torn tail: a record short of only its newline is kept, a corrupt
record mid-file is named by line and byte offset and can be dropped on request (after a
backup), and ``best`` refuses a value no trial can have (a flipped digit that still parses)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from conftest import sweep_args
from meminject.cli import main
from meminject.store._journal import corrupt_record, repair_torn_journal

optuna.logging.set_verbosity(optuna.logging.WARNING)
STUDY = "damage"
N_TRIALS = 12


def _complete(path: Path) -> int:
    study = optuna.load_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(path))))
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a journal of N_TRIALS complete trials, the last record a COMPLETE one."""
    path = tmp_path_factory.mktemp("built") / "optuna.journal"
    study = optuna.create_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(path))))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=N_TRIALS)
    data = path.read_bytes()
    assert json.loads(data.splitlines()[-1])["state"] == TrialState.COMPLETE.value
    return data


def test_a_last_record_missing_only_its_newline_is_completed_not_cut(tmp_path: Path, healthy: bytes) -> None:
    # Before: the repair cut the whole record, a COMPLETE trial became 11 of 12 and was re-run.
    path = tmp_path / "optuna.journal"
    path.write_bytes(healthy[:-1])
    message = repair_torn_journal(path)
    assert message is not None and "nothing was cut" in message
    assert path.read_bytes() == healthy
    assert _complete(path) == N_TRIALS
    assert repair_torn_journal(path) is None


def _corrupt(data: bytes, line: int, at: int, byte: int) -> tuple[bytes, int]:
    """``data`` with byte ``at`` of line ``line`` (from 1) replaced; and that line's offset."""
    offset = sum(map(len, data.splitlines(keepends=True)[: line - 1]))
    broken = bytearray(data)
    broken[offset + at] = byte
    return bytes(broken), offset


@pytest.mark.parametrize(
    ("at", "byte"),
    [(3, ord("#")), (1, 0xFF), (12, ord(":"))],
    ids=["a-key-renamed", "not-utf8", "not-json"],
)
def test_a_corrupt_record_mid_file_is_named_by_line_and_byte_offset(
    tmp_path: Path, healthy: bytes, capsys: pytest.CaptureFixture, at: int, byte: int, monkeypatch
) -> None:
    # Before: "cannot open study storage ... ('op_code')" or "Expecting value: line 1 column 1".
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "optuna.journal"
    broken, offset = _corrupt(healthy, 11, at, byte)
    path.write_bytes(broken)
    assert corrupt_record(path)[:2] == (11, offset)
    for command in (["best", f"storage={path}"], ["repair", f"storage={path}"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert f"line 11 (byte offset {offset}" in err[0] and "drop_line=11" in err[0], err[0]
    assert path.read_bytes() == broken  # only looked at
    assert not (tmp_path / "outputs").exists() and not list(tmp_path.glob("*.bak"))


def test_drop_line_backs_up_then_removes_only_the_corrupt_record(
    tmp_path: Path, healthy: bytes, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "optuna.journal"
    broken, offset = _corrupt(healthy, 11, 1, 0xFF)
    path.write_bytes(broken)
    assert main(["repair", f"storage={path}", "drop_line=3"]) == 2  # a valid record: kept
    err = capsys.readouterr().err
    assert "line 3" in err and "valid record" in err and "line 11 is the corrupt one" in err
    assert path.read_bytes() == broken and not list(tmp_path.glob("*.bak"))
    assert main(["repair", f"storage={path}", "drop_line=11"]) == 0
    out = capsys.readouterr().out
    lines = broken.splitlines(keepends=True)
    assert path.read_bytes() == b"".join(lines[:10] + lines[11:])
    (backup,) = tmp_path.glob("optuna.journal.dropped-*.bak")
    assert backup.read_bytes() == broken and str(backup) in out and "reads whole: 1 study" in out
    assert corrupt_record(path) is None
    _complete(path)  # Optuna opens it again


def test_repair_of_a_whole_journal_changes_nothing(tmp_path: Path, healthy: bytes, capsys) -> None:
    path = tmp_path / "optuna.journal"
    path.write_bytes(healthy)
    assert main(["repair", f"storage={path}"]) == 0
    assert "reads whole: 1 study (damage)" in capsys.readouterr().out
    assert path.read_bytes() == healthy
    assert main(["repair", f"storage={tmp_path / 'missing.journal'}"]) == 2
    assert main(["repair", f"storage={path}", "drop_line=0"]) == 2
    assert main(["repair", f"storage={path}", "drop_line=999"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 3
    assert path.read_bytes() == healthy


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A real 3-trial TPE sweep on the tiny model: (folder, its journal's bytes)."""
    folder = tmp_path_factory.mktemp("swept")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        args = sweep_args(folder, "sweep=smoke", "study=flip", "n_trials=3", "tracking.enabled=false")
        assert main([*args, "progress=false"]) == 0
    return folder, (folder / "optuna.journal").read_bytes()


def _with_value(data: bytes, trial: int, key: str, value: float) -> bytes:
    """The journal with ``key`` of ``trial`` changed in its records, still valid JSON."""
    out = []
    for line in data.splitlines(keepends=True):
        record = json.loads(line)
        if record.get("trial_id") == trial:
            if key == "objective" and "values" in record and record["values"]:
                record["values"] = [value]
            attrs = record.get("user_attr")
            if isinstance(attrs, dict) and key in attrs:
                attrs[key] = value
            line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        out.append(line)
    return b"".join(out)


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [("objective", 190344642.0, "mean_gain=1.90345e+08"), ("mean_damage", -0.5, "mean_damage=-0.5")],
)
def test_best_refuses_an_impossible_value_naming_the_trial(
    tmp_path: Path, swept: tuple[Path, bytes], capsys, monkeypatch, key: str, value: float, shown: str
) -> None:
    # Before: best ranked trial 1 first, with objective 190344642.
    monkeypatch.chdir(tmp_path)
    _, data = swept
    flipped = _with_value(data, 1, key, value)
    assert flipped != data
    (tmp_path / "optuna.journal").write_bytes(flipped)
    assert main(["best", f"storage={tmp_path / 'optuna.journal'}", "heldout=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trial 1 " in err[0] and shown in err[0], err
    assert not (tmp_path / "outputs").exists()


def test_best_accepts_the_values_a_trial_can_have(tmp_path: Path, swept: tuple[Path, bytes], capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, data = swept
    edge = _with_value(_with_value(data, 1, "objective", 1.0), 2, "mean_damage", 0.0)
    (tmp_path / "optuna.journal").write_bytes(edge)
    assert main(["best", f"storage={tmp_path / 'optuna.journal'}", "heldout=false"]) == 0, capsys.readouterr().err
