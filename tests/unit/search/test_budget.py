"""n_trials is a study's budget in total: a resumed study runs the missing trials, and says so."""

from __future__ import annotations

from conftest import load, sweep_args

from meminject.cli import main


def _sweep(capsys, tmp_path, *extra: str) -> tuple[int, str, str]:
    code = main(sweep_args(tmp_path, "tracking.enabled=false", "study=b", *extra))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _counted(tmp_path) -> int:
    from meminject.search._study import counted

    return len(counted(load(tmp_path, "b")))


def test_a_resumed_study_runs_up_to_its_new_budget_and_prints_stored_new_and_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _sweep(capsys, tmp_path, "n_trials=2")
    assert code == 0, err
    assert "resuming" not in out and "budget" not in out  # a new study: the header's "2 trials" is its budget
    assert _counted(tmp_path) == 2 and "2/2" in err  # the trials' bar

    code, out, err = _sweep(capsys, tmp_path, "n_trials=2")  # the same budget, complete
    assert code == 0, err
    assert "2/2" not in err and "100%" not in err  # no bar when nothing runs
    assert "  resuming: budget 2 (as stored) · 2 trials done · 0 to run" in out
    assert "study b is complete (2 trials): nothing to run" in out and _counted(tmp_path) == 2

    code, out, err = _sweep(capsys, tmp_path, "n_trials=3")  # a bigger budget: the missing trial runs
    assert code == 0, err
    assert "  resuming: stored budget 2, now 3 · 2 trials done · 1 to run" in out
    assert "done: 3 complete trials (1 new)" in out and _counted(tmp_path) == 3

    code, out, err = _sweep(capsys, tmp_path, "n_trials=1")  # below what is done: one line, nothing runs
    assert code == 0, err
    lines = [line for line in out.splitlines() if "budget" in line]
    assert lines == [
        "  budget: n_trials=1 is below the 3 trials already done (stored budget 3): nothing to run; "
        "n_trials is the study's total, so n_trials=4 or more adds trials"
    ]
    assert "new)" not in out and _counted(tmp_path) == 3


def test_workers_read_the_new_budget_from_the_study(tmp_path, capsys, monkeypatch):
    """`meminject worker` rebuilds the sweep from the study: it must see the budget of the last sweep command."""
    from meminject.search._study import stored_spec

    monkeypatch.chdir(tmp_path)
    assert _sweep(capsys, tmp_path, "n_trials=1", "workers=0")[0] == 0
    assert stored_spec(load(tmp_path, "b")).n_trials == 1
    code, out, _ = _sweep(capsys, tmp_path, "n_trials=2", "workers=0")
    assert code == 0 and "stored budget 1, now 2 · 0 trials done · 2 to run" in out
    assert stored_spec(load(tmp_path, "b")).n_trials == 2
