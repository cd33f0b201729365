"""Sweep figures, checked on the data behind the pixels: every layer on the axis, unexplored
cells grey (NaN), robust colour limits with clipped cells marked, pruned trials apart."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from meminject.sweep._figures import gain_heatmaps, optuna_figures, sweep_figures, trial_frame, trial_scatter
from meminject.sweep._heatmap import UNEXPLORED, robust_limit, tweak_axis

N_LAYERS = 30


def _figure_dir(tmp_path: Path) -> Path:
    """$MEMINJECT_TEST_ARTIFACTS keeps the PNGs for a person to look at; else tmp_path."""
    folder = (
        Path(os.environ["MEMINJECT_TEST_ARTIFACTS"]) / "figures"
        if os.environ.get("MEMINJECT_TEST_ARTIFACTS")
        else tmp_path
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _study(tweak_distribution, n: int = 40, pruned: int = 6, seed: int = 0) -> optuna.Study:
    """A TPE-like study on a 30-layer model: complete trials near +0.01, one −0.226 outlier."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(direction="maximize")
    distributions = {
        "injection.layer": IntDistribution(0, 27, step=3),
        "injection.tweak": tweak_distribution,
        "memory.encoding": CategoricalDistribution(["unembed", "embed"]),
    }
    for i in range(n + pruned):
        layer = int(rng.choice(range(0, N_LAYERS, 3)))
        if isinstance(tweak_distribution, CategoricalDistribution):
            tweak = float(rng.choice(tweak_distribution.choices))
        else:
            tweak = float(rng.uniform(tweak_distribution.low, tweak_distribution.high))
        encoding = ["unembed", "embed"][i % 2]
        gain = float(rng.normal(0.002, 0.006)) if i else -0.226
        attrs = {
            "site.injection.layer": layer,
            "site.injection.tweak": tweak,
            "site.memory.encoding": encoding,
            "site.memory.type": "correct",
        }
        params = {"injection.layer": layer, "injection.tweak": tweak, "memory.encoding": encoding}
        if i < n:
            study.add_trial(
                create_trial(
                    params=params, distributions=distributions, value=gain, user_attrs={**attrs, "mean_gain": gain}
                )
            )
        else:
            study.add_trial(
                create_trial(
                    params=params,
                    distributions=distributions,
                    state=TrialState.PRUNED,
                    user_attrs={**attrs, "partial_mean_gain": gain},
                )
            )
    return study


def _sites(study: optuna.Study) -> pd.DataFrame:
    from meminject.sweep import ranked_sites

    return ranked_sites(study)


def test_tweak_axis_bins_an_interval_evenly_and_keeps_grid_values():
    binned = tweak_axis([2.74, 5.87], low=1, high=15)
    assert binned.n == 14 and list(binned.edges) == list(range(1, 16))
    assert binned.column(2.74) == 1 and binned.column(15.0) == 13 and binned.column(1.0) == 0
    assert tweak_axis([1, 3], choices=[1, 3, 5]).values == [1.0, 3.0, 5.0]
    assert tweak_axis([1, 2, 4]).edges is None  # few values without a known space: exact columns


def test_robust_limit_ignores_one_outlier():
    values = np.r_[np.linspace(-0.01, 0.011, 30), -0.226]
    assert 0.009 < robust_limit(values) < 0.012


def test_heatmap_of_a_continuous_search_covers_every_layer_with_robust_colours(tmp_path):
    study = _study(FloatDistribution(1, 15))
    data = gain_heatmaps(_sites(study), _figure_dir(tmp_path) / "gain_heatmap_tpe.png", n_layers=N_LAYERS, study=study)
    assert set(data.grids) == {"embed / correct", "unembed / correct"}
    for grid in data.grids.values():
        assert grid.shape == (N_LAYERS, 14)  # one shared axis: every layer, τ in 14 even bins over [1, 15]
        assert (
            np.isnan(grid[1]).all() and np.isnan(grid).sum() > grid.size / 2
        )  # unexplored layers/cells are NaN (grey)
    assert list(data.layers) == list(range(N_LAYERS))
    assert data.limit < 0.05  # the −0.226 outlier does not set the scale ...
    assert sum(int(c.sum()) for c in data.clipped.values()) >= 1  # ... it is clipped and hatched
    best = max(((name, np.nanmax(g)) for name, g in data.grids.items()), key=lambda x: x[1])
    layer, column = np.unravel_index(np.nanargmax(data.grids[best[0]]), data.grids[best[0]].shape)
    assert (layer, column) == data.annotated[best[0]][0]  # the best cell carries its value
    from PIL import Image

    width, height = Image.open(data.path).size
    assert width >= 900 and height >= 450


def test_heatmap_colours_unexplored_cells_grey_not_white(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    study = _study(CategoricalDistribution([1.0, 4.0, 8.0]), n=10, pruned=0)
    seen = []
    monkeypatch.setattr(plt, "close", lambda fig=None: seen.append(fig))
    data = gain_heatmaps(_sites(study), _figure_dir(tmp_path) / "gain_heatmap_grid.png", n_layers=N_LAYERS, study=study)
    assert data.tweaks.values == [1.0, 4.0, 8.0] and data.tweaks.edges is None  # grid values are exact columns
    image = seen[0].axes[0].images[0]
    assert to_hex(image.cmap.get_bad()) == UNEXPLORED and np.ma.is_masked(image.get_array())
    assert image.get_clim() == (-data.limit, data.limit)  # centred at 0
    assert "train mean gain" in seen[0].axes[-1].get_ylabel()  # the colour bar names the objective
    plt.close("all")


def test_trial_scatter_colours_complete_trials_and_marks_pruned_ones(tmp_path):
    study = _study(FloatDistribution(1, 15))
    trials = trial_frame(study)
    assert (trials.state == "PRUNED").sum() == 6 and trials.loc[trials.state == "PRUNED", "gain"].notna().all()
    data = trial_scatter(trials, _figure_dir(tmp_path) / "trials_scatter.png", n_layers=N_LAYERS, study=study)
    assert len(data.complete) == 40 and len(data.pruned) == 6 and data.clipped >= 1
    assert data.path.stat().st_size > 5000


def test_optuna_figures_name_the_objective(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    study = _study(FloatDistribution(1, 15), pruned=0)
    seen = []
    monkeypatch.setattr(plt, "close", lambda fig=None: seen.append(fig))
    made = optuna_figures(study, _figure_dir(tmp_path))
    assert {p.name for p in made} == {"optimization_history.png", "param_importances.png"}
    history, importances = (fig.axes[0] for fig in seen if fig is not None and fig != "all")
    assert history.get_ylabel() == "train mean gain" and "Objective Value" not in history.get_ylabel()
    assert importances.get_legend() is None
    plt.close("all")


def test_sweep_figures_make_heatmap_scatter_and_optuna_views(tmp_path):
    study = _study(FloatDistribution(1, 15))
    made = sweep_figures(study, _sites(study), tmp_path / "figs", n_layers=N_LAYERS)
    assert [p.name for p in made] == [
        "gain_heatmap.png",
        "trials_scatter.png",
        "optimization_history.png",
        "param_importances.png",
    ]


@pytest.mark.parametrize("empty", [pd.DataFrame()])
def test_no_sites_no_heatmap(tmp_path, empty):
    assert gain_heatmaps(empty, tmp_path / "x.png", n_layers=4) is None
