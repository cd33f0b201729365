"""A study storage that cannot be opened because the disk is full: permanent, so one line at
once (what it is and the way out), exit 2, and the storage is tried once, not retried."""

from __future__ import annotations

import sqlite3

import optuna
import sqlalchemy.exc

from conftest import TINY
from meminject.cli import main


def test_a_full_disk_when_the_study_storage_opens_is_one_line_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    calls = []

    def full(*args, **kwargs):
        calls.append(args)
        raise sqlalchemy.exc.OperationalError("CREATE TABLE", {}, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", full)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = [
        "sweep",
        *TINY,
        "n_trials=1",
        "sampler=random",
        f"storage={url}",
        "tracking.enabled=false",
        "progress=false",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the disk is full" in err[0] and "free space" in err[0], err
    assert len(calls) == 1
