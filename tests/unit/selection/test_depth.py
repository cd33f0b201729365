"""The model axis: a relative depth that names a layer per model, several models in one study,
models kept within perf.models_mb, per-model ranking and the cross-model depth figure."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, load, sweep_args
from meminject.cli import main
from meminject.config import layer_at_depth, load_run_config, relative_depth, with_values
from meminject.core import ConfigError, MemInjectError
from meminject.engine import InjectionSpec, model_shape
from meminject.runner._trial import TrialRunner, trial_config

FIVE = ["model.tiny.n_layers=5"]


@pytest.mark.parametrize("n_layers", [1, 3, 5, 18, 30])
def test_layer_at_depth_spans_the_model_and_inverts_relative_depth(n_layers):
    assert layer_at_depth(0.0, n_layers) == 0
    assert layer_at_depth(1.0, n_layers) == n_layers - 1
    for layer in range(n_layers):
        depth = relative_depth(layer, n_layers)
        assert 0.0 <= depth <= 1.0
        assert layer_at_depth(depth, n_layers) == layer
    layers = [layer_at_depth(d, n_layers) for d in np.linspace(0, 1, 101)]
    assert layers == sorted(layers)  # monotone: deeper never maps to an earlier layer


def test_layer_at_depth_rounds_halves_up():
    assert layer_at_depth(0.5, 18) == 9  # 8.5 -> 9
    assert layer_at_depth(0.5, 30) == 15  # 14.5 -> 15
    assert layer_at_depth(0.49, 3) == 1 and layer_at_depth(0.24, 3) == 0


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), float("inf")])
def test_a_depth_outside_zero_one_is_refused(bad):
    with pytest.raises(ConfigError, match="injection.depth"):
        with_values(load_run_config(TINY), {"injection.depth": bad})


def test_trial_config_resolves_the_depth_in_each_trials_model():
    assert trial_config(TINY, {"injection.depth": 0.5}).injection.layer == 1  # 3 layers
    assert trial_config([*TINY, *FIVE], {"injection.depth": 0.5}).injection.layer == 2  # 5 layers
    # a model axis: the model of the trial decides
    cfg = trial_config([*TINY, *FIVE], {"model": "tiny-gemma3", "injection.depth": 1.0})
    assert cfg.model.name == "tiny-gemma3" and cfg.injection.layer == 4
    assert cfg.injection.depth == 1.0 and cfg.point.hook_name == "blocks.4.hook_attn_out"
    # without a depth the layer is the config's
    assert trial_config(TINY, {"injection.layer": 2}).injection.layer == 2


def test_an_unresolved_depth_is_never_evaluated_at_the_default_layer():
    run = with_values(load_run_config(TINY), {"injection.depth": 1.0})  # layer is still conf's default
    shape = model_shape(run.model)

    class Shape:
        name, n_layers, n_heads = shape["model"], shape["n_layers"], shape["n_heads"]

    with pytest.raises(MemInjectError, match="was not resolved"):
        InjectionSpec.from_config(run).validate(Shape)
    resolved = dataclasses.replace(run, injection=run.injection.resolved(shape["n_layers"]))
    InjectionSpec.from_config(resolved).validate(Shape)  # resolved: fine


def test_searching_both_layer_and_depth_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(sweep_args(tmp_path, "sweep=tpe", "injection.depth=interval(0, 1)"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "injection.layer and injection.depth both place the memory" in err[0]
    assert not (tmp_path / "optuna.journal").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_worker_keeps_both_models_within_budget_and_swaps_when_they_do_not_fit(caplog):
    small = trial_config([*TINY, "perf.models_mb=8192"], {"model": "tiny", "injection.layer": 1})
    other = trial_config([*TINY, "perf.models_mb=8192"], {"model": "tiny-gemma3", "injection.layer": 1})
    roomy = TrialRunner()
    first = [roomy.run(c)[2].summary["mean_gain"] for c in (small, other, small, other)]
    assert roomy.swaps == [] and len(roomy._evaluators) == 2
    assert first[0] == first[2] and first[1] == first[3]

    tight = [dataclasses.replace(c, perf=dataclasses.replace(c.perf, models_mb=0.0)) for c in (small, other)]
    runner = TrialRunner()
    again = [runner.run(c)[2].summary["mean_gain"] for c in (*tight, tight[0])]
    assert len(runner.swaps) == 2 and len(runner._evaluators) == 1  # only the current model stays
    assert "swapping out model tiny " in runner.swaps[0] and "to load tiny-gemma3" in runner.swaps[0]
    assert "perf.models_mb=0" in runner.swaps[0] and "swapping out model tiny-gemma3" in runner.swaps[1]
    assert again == first[:3]  # a model loaded again gives the same numbers
    assert any("swapping out model" in r.getMessage() for r in caplog.records)


def _two_model_conf(tmp_path: Path) -> None:
    """A ./conf model with another depth than tiny's 3 layers (./conf adds options)."""
    folder = tmp_path / "conf" / "model"
    folder.mkdir(parents=True)
    (folder / "tiny5.yaml").write_text(
        "defaults:\n  - tiny-gemma3\n  - _self_\nname: tiny5\ndescription: a 5-layer tiny Gemma\ntiny:\n  n_layers: 5\n"
    )
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "two.yaml").write_text(
        "description: two models by relative depth\nobjective: mean_gain\ndirection: maximize\nsampler: grid\n"
        "n_trials: null\nseed: 0\nconfig:\n  memory.type: correct\n  data.split: 0.5\n  data.part: train\n"
        "params:\n  model: choice(tiny, tiny5)\n  injection.depth: choice(0, 0.5, 1)\n  injection.tweak: choice(2, 8)\n"
    )


@pytest.mark.slow  # a 12-trial grid, then best's held-out check and depth curve (~1 min on 2 cores)
def test_one_grid_study_over_two_models_by_depth_ranks_and_figures_per_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _two_model_conf(tmp_path)
    args = [a for a in sweep_args(tmp_path, "sweep=two", "data.limit=8") if a != "model=tiny"]  # the axis decides
    assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    study = load(tmp_path, "two-tiny_tiny5-demo")  # both models name the study
    figures = tmp_path / "outputs" / "figures" / "two-tiny_tiny5-demo"
    for model in ("tiny", "tiny5"):  # one heatmap and scatter per model, each on its own layers
        assert (figures / f"gain_heatmap_{model}.png").is_file() and (figures / f"trials_scatter_{model}.png").is_file()
    assert not (figures / "gain_heatmap.png").exists()
    layers = {(t.user_attrs["site.model"], t.user_attrs["site.injection.layer"]) for t in study.get_trials()}
    assert layers == {("tiny", 0), ("tiny", 1), ("tiny", 2), ("tiny5", 0), ("tiny5", 2), ("tiny5", 4)}
    code = main(["best", f"storage={tmp_path / 'optuna.journal'}", "top=2", "bootstrap=50"])
    out = capsys.readouterr().out
    assert code == 0
    assert "within each model (top 2):\ntiny" in out or "within each model (top 2):\ntiny5" in out
    heldout = pd.read_csv(tmp_path / "outputs" / "best" / "two-tiny_tiny5-demo-heldout.csv")
    assert heldout.groupby("model").size().to_dict() == {"tiny": 2, "tiny5": 2}  # each model judged
    assert set(heldout["depth"]) <= {0.0, 0.5, 1.0}
    curve = pd.read_csv(tmp_path / "outputs" / "best" / "two-tiny_tiny5-demo-depth.csv")
    assert curve.groupby("model").size().to_dict() == {"tiny": 3, "tiny5": 3}  # every layer that ran
    assert np.isfinite(curve["heldout_gain"]).all()
    ranked = pd.read_csv(tmp_path / "outputs" / "best" / "two-tiny_tiny5-demo.csv")
    for (model, layer), rows in ranked.groupby(["model", "injection.layer"]):
        best = curve[(curve["model"] == model) & (curve["injection.layer"] == layer)]
        assert best["mean_gain"].iloc[0] == pytest.approx(rows["mean_gain"].max())  # the best τ of the layer
    assert (tmp_path / "outputs" / "figures" / "two-tiny_tiny5-demo" / "gain_by_depth.png").stat().st_size > 10_000


def test_depth_figure_draws_train_and_heldout_per_model_and_marks_verdicts(tmp_path):
    from meminject.views._cross_model import depth_curve, depth_figure

    ranked = pd.DataFrame(
        {
            "model": ["a", "a", "a", "b", "b", "b"],
            "injection.layer": [0, 0, 1, 0, 2, 4],
            "depth": [0.0, 0.0, 1.0, 0.0, 0.5, 1.0],
            "injection.tweak": [8.0, 2.0, 2.0, 4.0, 4.0, 4.0],
            "memory.type": ["correct"] * 6,
            "mean_gain": [0.3, 0.1, 0.2, 0.05, 0.15, -0.1],
        }
    )
    curve = depth_curve(ranked)
    assert list(zip(curve["model"], curve["injection.layer"], curve["injection.tweak"])) == [
        ("a", 0, 8.0),
        ("a", 1, 2.0),
        ("b", 0, 4.0),
        ("b", 2, 4.0),
        ("b", 4, 4.0),
    ]
    curve["heldout_gain"] = [0.2, 0.1, 0.0, 0.1, -0.2]
    report = pd.DataFrame(
        {"model": ["a", "b"], "depth": [0.0, 0.5], "heldout_gain": [0.2, 0.1], "verdict": ["holds", "x"]}
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captured = {}
    original = plt.Figure.savefig

    def keep(fig, *args, **kwargs):
        captured["fig"] = fig
        return original(fig, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        path = depth_figure(curve, report, tmp_path / "f.png", "t")
    finally:
        plt.Figure.savefig = original
    ax = captured["fig"].axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "a: train" in labels and "b: held-out (3 layers, best τ each)" in labels
    heldout_b = next(line for line in ax.get_lines() if line.get_label().startswith("b: held-out"))
    assert list(heldout_b.get_xdata()) == [0.0, 0.5, 1.0] and list(heldout_b.get_ydata()) == [0.0, 0.1, -0.2]
    stars = [c for c in ax.collections if len(c.get_offsets())]
    assert sorted(tuple(c.get_offsets()[0]) for c in stars) == [(0.0, 0.2), (0.5, 0.1)]
    assert path.stat().st_size > 5_000


def test_per_model_top_keeps_each_models_best_rows_model_by_model():
    from meminject.views._cross_model import format_per_model, per_model_top

    table = pd.DataFrame(
        {
            "rank": [1, 2, 3, 4, 5, 6],
            "model": ["a", "a", "a", "b", "a", "b"],
            "injection.layer": [0, 1, 2, 0, 3, 1],
            "mean_gain": [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
        }
    )
    top = per_model_top(table, 2)
    assert list(zip(top["model"], top["rank"])) == [("a", 1), ("a", 2), ("b", 4), ("b", 6)]  # b's sites are judged too
    assert list(per_model_top(table[table["model"] == "a"], 2)["rank"]) == [1, 2]  # one model: the top rows
    text = format_per_model(table, 2)
    assert text.splitlines()[0] == "a:" and "b:" in text.splitlines()
    b_rows = text.split("b:\n")[1].splitlines()[1:]
    assert [row.split()[0] for row in b_rows] == ["1", "2"]  # ranked within the model
