"""``best`` from another folder on a shared study: the sweep's MLflow store is not there, and
``best`` neither fails on the parent run it cannot find nor creates a store (issue #26; the
study is a shared journal here, the same code path as a shared PostgreSQL study)."""

from __future__ import annotations

import pytest

from meminject.cli import main

TINY = ["model=tiny", "model.device=cpu", "data.limit=6"]


@pytest.mark.slow
def test_best_from_another_folder_ranks_and_notes_the_missing_run(tmp_path, monkeypatch, capsys):
    journal = tmp_path / "shared.journal"
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    monkeypatch.chdir(tmp_path / "A")
    args = ["sweep", *TINY, "n_trials=1", "sampler=random", f"storage={journal}", "progress=false", "study=shared"]
    assert main(args) == 0
    assert (tmp_path / "A" / "mlruns" / "mlflow.db").is_file()  # the parent run lives here
    capsys.readouterr()

    monkeypatch.chdir(tmp_path / "B")
    code = main(["best", f"storage={journal}", "heldout=false"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err and "not found" not in out + err
    assert "note: the sweep's MLflow parent run" in out and "is not in sqlite:///" in out
    assert (tmp_path / "B" / "outputs" / "best" / "shared-distinct.csv").is_file()
    assert not (tmp_path / "B" / "mlruns" / "mlflow.db").exists()  # no store created elsewhere

    # an MLflow store that exists there but holds other runs: the same note, no MlflowException
    local = f"storage={tmp_path / 'B' / 'local.journal'}"
    assert main(["sweep", *TINY, "n_trials=1", "sampler=random", local, "progress=false", "study=local"]) == 0
    capsys.readouterr()
    code = main(["best", f"storage={journal}", "heldout=false"])
    out, err = capsys.readouterr()
    assert code == 0 and "note: the sweep's MLflow parent run" in out, out + err


@pytest.mark.parametrize(
    "args, message",
    [
        (["best"], "no studies in"),
        (["best", "storage=sqlite:///elsewhere/optuna.db"], "no studies in sqlite:///elsewhere/optuna.db"),
        (["repair"], "no study journal at"),
    ],
)
def test_reading_commands_in_an_empty_folder_leave_nothing_behind(tmp_path, monkeypatch, capsys, args, message):
    """``best`` or ``repair`` where no sweep ran: one error line, exit 2, and no empty ./mlruns
    (nor a SQLite file) created by reading."""
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
