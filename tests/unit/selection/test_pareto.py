"""Multi-objective sweeps (gain against damage), the constrained mode, and `best` on the front."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import load, mlflow_runs, run_cli, start_cli, sweep_args
from meminject.selection._results import pareto_mask


def test_pareto_mask_keeps_exactly_the_non_dominated_rows():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(60, 2))
    values[5] = values[6]  # a tie dominates neither
    mask = pareto_mask(values, ["maximize", "minimize"])
    for i, (gain, damage) in enumerate(values):
        dominated = any(
            g >= gain and d <= damage and (g > gain or d < damage) for j, (g, d) in enumerate(values) if j != i
        )
        assert mask[i] == (not dominated)
    assert mask.any()


def _run(tmp_path, *extra, timeout=600):
    proc = run_cli(*sweep_args(tmp_path, *extra), cwd=tmp_path, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_a_multi_objective_sweep_tells_both_values_and_best_lists_only_the_front(tmp_path, monkeypatch, capsys):
    out = _run(
        tmp_path, "sweep=pareto", "study=mo", "n_trials=12", "data.limit=12", "memory.encoding=choice(unembed, embed)"
    )
    assert "maximize mean_gain and minimize mean_damage" in out
    study = load(tmp_path, "mo")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 12 and all(len(t.values) == 2 for t in complete)
    for t in complete:
        assert t.values == [t.user_attrs["mean_gain"], t.user_attrs["mean_damage"]]
    runs = mlflow_runs(tmp_path, "trial")
    assert all("mean_damage" in r.data.metrics for r in runs)

    from meminject.cli import main

    monkeypatch.chdir(tmp_path)
    assert (
        main(["best", "study=mo", f"storage={tmp_path / 'optuna.journal'}", "controls=random_vector", "bootstrap=200"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "Pareto-optimal sites" in printed and "damage train" in printed
    front = pd.read_csv(tmp_path / "outputs" / "best" / "mo-pareto.csv")
    every = pd.read_csv(tmp_path / "outputs" / "best" / "mo.csv")
    values = every[["mean_gain", "mean_damage"]].to_numpy()
    expected = every[pareto_mask(values, ["maximize", "minimize"])]
    assert sorted(front["best_trial"]) == sorted(expected["best_trial"]) and len(front) >= 1
    heldout = pd.read_csv(tmp_path / "outputs" / "best" / "mo-heldout.csv")
    assert {"heldout_damage", "heldout_damage_ci_low", "heldout_damage_ci_high", "verdict"} <= set(heldout.columns)
    assert (heldout["heldout_damage_ci_low"] <= heldout["heldout_damage"]).all() and (
        heldout["heldout_damage"] <= heldout["heldout_damage_ci_high"]
    ).all()
    assert (tmp_path / "outputs" / "figures" / "mo" / "pareto_front.png").stat().st_size > 10_000


def test_the_constrained_mode_marks_and_ranks_feasible_sites_first(tmp_path):
    _run(
        tmp_path,
        "sweep=tpe",
        "study=c",
        "n_trials=8",
        "data.limit=10",
        "constraint=mean_damage<=0.01",
        "memory.encoding=choice(unembed)",
    )
    table = pd.read_csv(tmp_path / "outputs" / "best" / "c.csv")
    assert "feasible" in table.columns
    np.testing.assert_array_equal(table["feasible"], table["mean_damage"] <= 0.01)
    assert list(table["feasible"]) == sorted(table["feasible"], reverse=True)  # feasible first
    study = load(tmp_path, "c")
    assert all(
        "constraints" in t.system_attrs for t in study.get_trials(states=(TrialState.COMPLETE,))
    )  # Optuna's TPE saw them


@pytest.mark.slow
def test_a_multi_objective_sweep_with_two_workers_resumes_after_sigkill_without_duplicates(tmp_path):
    extra = [
        "sweep=pareto",
        "sampler=grid",
        "study=mok",
        "workers=2",
        "heartbeat=1",
        "grace=4",
        "data.limit=12",
        "injection.tweak=choice(2, 6)",
        "memory.encoding=choice(unembed, embed)",
    ]
    args = sweep_args(tmp_path, *extra)
    proc = start_cli(*args, cwd=tmp_path, trial_delay_s=0.5, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if len(load(tmp_path, "mok").get_trials(states=(TrialState.COMPLETE,))) >= 3:
                break
        except Exception:  # noqa: BLE001 - the study is not there yet
            pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and both workers, mid-trial
    proc.wait()
    before = load(tmp_path, "mok")
    assert 3 <= len(before.get_trials(states=(TrialState.COMPLETE,))) < 3 * 2 * 2
    time.sleep(5)  # the killed trials' heartbeats go stale
    _run(tmp_path, *extra)
    study = load(tmp_path, "mok")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    points = Counter(tuple(sorted(t.params.items())) for t in complete)
    assert len(points) == 3 * 2 * 2 and set(points.values()) == {1}, points  # every point once, none twice
    assert all(len(t.values) == 2 for t in complete)
    assert not study.get_trials(states=(TrialState.RUNNING,))
