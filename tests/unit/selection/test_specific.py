"""objective=specific_gain sweeps, log-spaced τ, and the τ-edge notes of ``best`` (tiny model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import load, mlflow_runs, sweep_args
from meminject.cli import main
from meminject.core._errors import ConfigError
from meminject.search._edges import edge_notes, tweak_edges, with_edges
from meminject.search._settings import load_sweep
from meminject.search._space import log_values, parse_axis


def test_logrange_is_log_spaced_with_both_ends_and_refuses_bad_bounds():
    values = list(parse_axis("injection.tweak", "logrange(0.005, 1, 9)").distribution.choices)
    assert values[0] == 0.005 and values[-1] == 1.0 and len(values) == 9
    ratios = np.diff(np.log(values))
    np.testing.assert_allclose(ratios, ratios.mean(), rtol=1e-3)  # equal steps in log τ (4 digits kept)
    assert log_values(2, 2, 1) == [2.0]
    for bad in ("logrange(0, 1, 5)", "logrange(1, 0.5, 3)", "logrange(0.1, 1)", "logrange(a, 1, 3)"):
        with pytest.raises(ConfigError, match="logrange|log range"):
            parse_axis("injection.tweak", bad)


def test_log_uniform_tpe_samples_every_decade(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = sweep_args(tmp_path, "sweep=tpe", "study=logtpe", "n_trials=12", "memory.encoding=choice(unembed)")
    assert main(args) == 0
    tweaks = [t.params["injection.tweak"] for t in load(tmp_path, "logtpe").get_trials(states=(TrialState.COMPLETE,))]
    assert len(tweaks) == 12 and all(0.005 <= t <= 1 for t in tweaks)
    assert min(tweaks) < 0.05  # uniform on 0.005..1 puts 4.5% below 0.05: log-uniform about 43%


def test_objective_specific_gain_turns_the_shuffled_copy_on_and_refuses_turning_it_off():
    spec, _ = load_sweep(["sweep=specific", "model=tiny"])
    assert spec.objective == "specific_gain" and "metric.specific=true" in spec.overrides
    spec, _ = load_sweep(["sweep=smoke", "model=tiny", "objective=specific_gain"])
    assert (
        spec.objective == "specific_gain" and spec.direction == "maximize" and "metric.specific=true" in spec.overrides
    )
    with pytest.raises(ConfigError, match="needs the shuffled memory of every trial"):
        load_sweep(["sweep=specific", "model=tiny", "metric.specific=false"])
    with pytest.raises(ConfigError, match="objective='gainz' is not one of"):
        load_sweep(["sweep=smoke", "objective=gainz"])


@pytest.mark.parametrize("pruner", ["none", "mean"])
def test_a_specific_gain_sweep_records_it_in_optuna_mlflow_and_the_table(tmp_path, monkeypatch, capsys, pruner):
    monkeypatch.chdir(tmp_path)
    args = sweep_args(
        tmp_path,
        "sweep=specific",
        "study=spec",
        "data.limit=30",
        "injection.tweak=logrange(0.05, 1, 3)",
        f"pruner={pruner}",
        "prune_chunks=3",
    )
    assert main(args) == 0
    study = load(tmp_path, "spec")
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert done and all(t.value == pytest.approx(t.user_attrs["specific_gain"], rel=1e-12) for t in done)
    for t in done:  # the paired difference: gain − the shuffled memory's gain
        assert t.user_attrs["specific_gain"] == pytest.approx(
            t.user_attrs["mean_gain"] - t.user_attrs["shuffled_gain"], rel=1e-6, abs=1e-15
        )
    runs = {r.data.tags["meminject.trial_number"]: r for r in mlflow_runs(tmp_path, "trial")}
    for t in done:
        metrics = runs[str(t.number)].data.metrics
        assert metrics["specific_gain"] == pytest.approx(t.user_attrs["specific_gain"], rel=1e-9)
        assert metrics["mean_gain"] == pytest.approx(t.user_attrs["mean_gain"], rel=1e-9)
    ranked = pd.read_csv(tmp_path / "outputs" / "best" / "spec.csv")
    assert {"specific_gain", "mean_gain", "shuffled_gain"} <= set(ranked.columns)
    assert ranked.specific_gain.is_monotonic_decreasing


def test_best_flags_a_top_tau_on_the_searched_edge_and_says_how_to_extend_it():
    table = pd.DataFrame({"rank": [1, 2, 3], "injection.tweak": [15.0, 8.0, 1.0]})
    params = {"injection.tweak": "range(1, 16)"}
    assert tweak_edges(table, params) == ["high", "", "low"]
    notes = edge_notes(with_edges(table, params), params)
    assert len(notes) == 2
    assert "τ=15 of rank 1 is the largest value searched" in notes[0] and "upward" in notes[0]
    assert "injection.tweak='logrange(7.5, 120, 9)'" in notes[0]
    assert "τ=1 of rank 3 is the smallest value searched" in notes[1] and "downward" in notes[1]
    # a continuous log range: near its end in log τ counts, the middle does not
    params = {"injection.tweak": "tag(log, interval(0.005, 1))"}
    edges = tweak_edges(pd.DataFrame({"injection.tweak": [0.99, 0.07, 0.0051]}), params)
    assert edges == ["high", "", "low"]
    assert (
        "tag(log, interval("
        in edge_notes(with_edges(pd.DataFrame({"rank": [1], "injection.tweak": [0.99]}), params), params)[0]
    )
    # τ not searched: no edge, no column
    assert "tweak_edge" not in with_edges(table, {"injection.layer": "range(0, 3)"}).columns


def test_best_prints_the_edge_note_and_the_specific_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = sweep_args(tmp_path, "sweep=specific", "study=edge", "data.limit=30", "injection.tweak=logrange(0.05, 1, 3)")
    assert main(args) == 0
    capsys.readouterr()
    assert main(["best", "study=edge", f"storage={tmp_path / 'optuna.journal'}", "top=3", "bootstrap=200"]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "outputs" / "best" / "edge-distinct.csv")
    on_edge = table.head(3)["injection.tweak"].isin([0.05, 1.0])
    assert ("value searched (injection.tweak=logrange(0.05, 1, 3))" in out) == bool(on_edge.any())
    assert (tmp_path / "outputs" / "figures" / "edge" / "specific_by_layer.png").stat().st_size > 10_000
    report = pd.read_csv(tmp_path / "outputs" / "best" / "edge-heldout.csv")
    np.testing.assert_allclose(report.train_specific_gain, table.head(len(report)).specific_gain, rtol=1e-12)
