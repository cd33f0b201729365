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

from meminject.views._figures import gain_heatmaps, optuna_figures, sweep_figures, trial_frame, trial_scatter
from meminject.views._heatmap import UNEXPLORED, robust_limit, tweak_axis

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
    from meminject.selection._results import ranked_sites

    return ranked_sites(study)


def test_a_log_uniform_interval_is_binned_on_a_log_scale():
    binned = tweak_axis([0.006, 0.02, 0.5], low=0.005, high=1.0, log=True)
    ratios = binned.edges[1:] / binned.edges[:-1]
    assert binned.n == 10 and np.allclose(ratios, ratios[0]) and binned.edges[0] == pytest.approx(0.005)
    assert [binned.column(t) for t in (0.006, 0.02, 0.5)] == [0, 2, 8]  # even bins would put 0.006 and 0.02 together
    assert tweak_axis([0.006, 0.02], low=0.005, high=1.0).column(0.02) == 0


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


# ---------------------------------------------------------------- figures a paper could use (#24)


def _grid_study(gains: dict[tuple[int, int, str], float]) -> optuna.Study:
    """A grid study as ``range(1, 16)`` makes it: τ an IntDistribution, one trial per point."""
    study = optuna.create_study(direction="maximize")
    distributions = {
        "injection.layer": IntDistribution(0, N_LAYERS - 1),
        "injection.tweak": IntDistribution(1, 15),
        "memory.encoding": CategoricalDistribution(["unembed", "embed"]),
    }
    for (layer, tweak, encoding), gain in gains.items():
        attrs = {
            "site.injection.layer": layer,
            "site.injection.tweak": tweak,
            "site.memory.encoding": encoding,
            "site.memory.type": "correct",
            "mean_gain": gain,
        }
        params = {"injection.layer": layer, "injection.tweak": tweak, "memory.encoding": encoding}
        study.add_trial(create_trial(params=params, distributions=distributions, value=gain, user_attrs=attrs))
    return study


def _full_grid(seed: int = 0) -> dict[tuple[int, int, str], float]:
    """Every layer × τ 1..15 for unembed; the three best cells side by side in the last column's row."""
    rng = np.random.default_rng(seed)
    gains = {
        (layer, tweak, "unembed"): float(rng.normal(0, 0.004)) for layer in range(N_LAYERS) for tweak in range(1, 16)
    }
    gains.update({(12, 13, "unembed"): 0.0913, (12, 14, "unembed"): 0.1027, (12, 15, "unembed"): 0.1141})
    return gains


def test_a_grid_of_15_tweak_values_keeps_15_exact_columns(tmp_path):
    study = _grid_study(_full_grid())
    data = gain_heatmaps(
        _sites(study), _figure_dir(tmp_path) / "gain_heatmap_paper_grid.png", n_layers=N_LAYERS, study=study
    )
    assert data.tweaks.edges is None and data.tweaks.values == [float(t) for t in range(1, 16)]
    grid = data.grids["unembed / correct"]
    assert grid.shape == (N_LAYERS, 15) and np.isfinite(grid).all()  # one trial, one exact cell
    assert grid[12, 14] == pytest.approx(0.1141)


def test_labels_fit_inside_their_cells_so_they_never_overlap_or_leave_the_panel(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from meminject.views._cell_labels import MIN_FONT, _cell_box

    monkeypatch.setattr(plt, "close", lambda fig=None: None)  # keep the canvas to measure on

    study = _grid_study(_full_grid())
    data = gain_heatmaps(
        _sites(study), _figure_dir(tmp_path) / "gain_heatmap_labels.png", n_layers=N_LAYERS, study=study
    )
    labels = data.labels["unembed / correct"]
    assert [(lab.layer, lab.column) for lab in labels] == [
        (12, 14),
        (12, 13),
        (12, 12),
    ]  # side by side, last at the edge
    boxes = []
    for lab in labels:
        assert lab.artist is not None and lab.fontsize >= MIN_FONT
        renderer = lab.artist.figure.canvas.get_renderer()
        box = lab.artist.get_window_extent(renderer)
        cell = _cell_box(lab.artist.axes, lab.layer, lab.column)
        assert cell.x0 <= box.x0 and box.x1 <= cell.x1 and cell.y0 <= box.y0 and box.y1 <= cell.y1, lab
        panel = lab.artist.axes.get_window_extent(renderer)
        assert panel.x0 <= box.x0 and box.x1 <= panel.x1
        boxes.append(box)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    shown = {lab.text for lab in labels}  # each label is its value, or its rank with the value in the title
    title = labels[0].artist.axes.get_title()
    assert all(t.startswith("+") or f"{t}: L12" in title for t in shown), (shown, title)
    plt.close("all")


def test_best_labels_mark_only_cells_above_zero(tmp_path):
    two_negative = _grid_study({(3, 4, "unembed"): -0.02, (6, 9, "unembed"): -0.001})
    data = gain_heatmaps(_sites(two_negative), tmp_path / "neg.png", n_layers=N_LAYERS, study=two_negative)
    assert data.annotated["unembed / correct"] == [] and data.labels["unembed / correct"] == []
    mixed = _grid_study({(3, 4, "unembed"): -0.02, (6, 9, "unembed"): 0.003, (7, 9, "unembed"): 0.0})
    data = gain_heatmaps(_sites(mixed), tmp_path / "mixed.png", n_layers=N_LAYERS, study=mixed)
    assert data.annotated["unembed / correct"] == [(6, 8)]  # layer 6, τ=9's column
    assert [lab.value for lab in data.labels["unembed / correct"]] == [0.003]


def test_a_panel_with_too_few_trials_says_so(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    gains = {(layer, tweak, "unembed"): 0.001 * tweak for layer in range(0, N_LAYERS, 3) for tweak in (2, 5)}
    gains.update({(4, 3, "embed"): -0.01, (9, 12, "embed"): -0.002})  # a 2-trial panel
    study = _grid_study(gains)
    seen = []
    monkeypatch.setattr(plt, "close", lambda fig=None: seen.append(fig))
    data = gain_heatmaps(
        _sites(study), _figure_dir(tmp_path) / "gain_heatmap_2_trials.png", n_layers=N_LAYERS, study=study
    )
    assert data.trials == {"embed / correct": 2, "unembed / correct": 20}
    assert set(data.notes) == {"embed / correct"} and "only 2 trials" in data.notes["embed / correct"]
    titles = {ax.get_title() for ax in seen[0].axes}
    assert any("embed / correct" in t and "only 2 trials" in t for t in titles)
    assert not any(t.startswith("unembed") and "only" in t for t in titles)
    plt.close("all")


def test_heatmap_and_scatter_of_a_sweep_share_one_colour_scale(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    study = _study(FloatDistribution(1, 15))
    seen = []
    monkeypatch.setattr(plt, "close", lambda fig=None: seen.append(fig))
    sweep_figures(study, _sites(study), _figure_dir(tmp_path) / "shared", n_layers=N_LAYERS)
    heat, scatter = seen[0], seen[1]
    heat_clims = {im.get_clim() for ax in heat.axes for im in ax.images}
    scatter_clims = {c.get_clim() for ax in scatter.axes for c in ax.collections if c.get_array() is not None}
    assert len(heat_clims) == 1 and heat_clims == scatter_clims, (heat_clims, scatter_clims)
    limit = heat_clims.pop()[1]
    labels = [ax.get_ylabel() for fig in (heat, scatter) for ax in fig.axes if "clipped at" in ax.get_ylabel()]
    assert len(labels) == 2 and len(set(labels)) == 1 and f"±{limit:.3g}" in labels[0]
    plt.close("all")


@pytest.mark.parametrize("n, drawn, warned", [(5, False, False), (24, True, True), (60, True, False)])
def test_optunas_importances_warn_at_few_trials_and_skip_at_very_few(tmp_path, monkeypatch, caplog, n, drawn, warned):
    import matplotlib.pyplot as plt

    caplog.set_level("INFO", logger="meminject")
    study = _study(FloatDistribution(1, 15), n=n, pruned=0)
    seen = []
    monkeypatch.setattr(plt, "close", lambda fig=None: seen.append(fig))
    made = optuna_figures(study, tmp_path)
    assert ("param_importances.png" in {p.name for p in made}) == drawn
    if drawn:
        title = [fig for fig in seen if fig is not None and fig != "all"][-1].axes[0].get_title()
        assert (f"only {n} trials" in title) == warned, title
    assert any(
        f"from {n} trials" in r.getMessage() or f"{n} complete trials" in r.getMessage() for r in caplog.records
    ) == (warned or not drawn)
    plt.close("all")


def test_optunas_figures_leave_the_matplotlib_style_alone(tmp_path):
    """Optuna's plots switch pyplot to its ggplot style for good; a heatmap drawn after them
    (a second `meminject.figures` in a notebook) would come out grey with a white grid."""
    import matplotlib.pyplot as plt

    before = {k: plt.rcParams[k] for k in ("axes.facecolor", "axes.grid", "axes.edgecolor")}
    optuna_figures(_study(FloatDistribution(1, 15), n=12, pruned=0), tmp_path)
    assert {k: plt.rcParams[k] for k in before} == before
