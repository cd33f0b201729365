"""The sweep's layer × τ views: a gain heatmap (here) and a trial scatter (:mod:`._scatter`),
for grid and continuous searches alike.

Both share one layer axis (every layer of the model, explored or not), one τ axis (grid
values as exact columns, a continuous interval binned evenly) and one colour scale: diverging,
centred at 0, with robust limits (a percentile of |gain|) so that one outlier cannot wash out
the best cells; cells beyond the limits are hatched and say so in the legend. A sweep's
heatmap and scatter take the same ``limit`` (see :func:`meminject.views._figures.sweep_figures`).
Unexplored cells are grey, never the white of a zero gain. The best cells above zero carry
their value, fitted inside the cell (:mod:`._cell_labels`); a panel with too few trials says
so in its title. The functions return the data they drew (:class:`HeatmapData`,
:class:`ScatterData`), so tests check the numbers behind the pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ._cell_labels import CellLabel, best_cells, format_gain, label_cells

__all__ = [
    "TweakAxis",
    "tweak_axis",
    "robust_limit",
    "HeatmapData",
    "draw_gain_heatmap",
    "GAIN_LABEL",
    "few_trials",
]

GAIN_LABEL = "train mean gain"  # sweeps optimize on the train part (data.part=train)
UNEXPLORED = "#b0b0b0"  # grey: distinct from the white of a zero gain on RdBu
CMAP = "RdBu"  # red = the injection hurts, blue = it helps
MAX_EXACT = 15  # up to this many distinct τ values keep exact columns
MARKERS = {"unembed": "o", "embed": "s", "layer": "^"}


@dataclass
class TweakAxis:
    """τ columns: exact values (``edges`` None) or even bins over the searched interval."""

    values: list[float]
    edges: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.values) if self.edges is None else len(self.edges) - 1

    def column(self, tweak: float) -> int:
        if self.edges is None:
            return int(np.argmin([abs(v - tweak) for v in self.values]))
        return int(np.clip(np.searchsorted(self.edges, tweak, side="right") - 1, 0, self.n - 1))


def tweak_axis(
    tweaks: Sequence[float],
    *,
    low: float | None = None,
    high: float | None = None,
    choices: Sequence[float] | None = None,
    log: bool = False,
) -> TweakAxis:
    """Exact columns for a grid (or few values), else even bins over [low, high] (the searched
    interval when known, else the data's range): 1-wide bins when the span is a whole number
    from 6 to 20 (interval(1, 15) → 14 bins), 10 bins otherwise; a log-uniform interval
    (``log``) gets 10 bins even on a log scale (0.005 … 1: ×1.7 each)."""
    if choices is not None and len(choices) <= MAX_EXACT:
        return TweakAxis(sorted(float(c) for c in choices))
    distinct = sorted({float(t) for t in tweaks})
    if low is None or high is None:
        if len(distinct) <= MAX_EXACT:
            return TweakAxis(distinct)
        low, high = distinct[0], distinct[-1]
    if log and float(low) > 0:
        edges = np.geomspace(float(low), float(high), 11)
        return TweakAxis([float(np.sqrt(a * b)) for a, b in zip(edges[:-1], edges[1:])], edges)
    span = float(high) - float(low)
    n_bins = int(round(span)) if 6 <= span <= 20 and abs(span - round(span)) < 1e-9 else 10
    edges = np.linspace(float(low), float(high), n_bins + 1)
    return TweakAxis([(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])], edges)


def robust_limit(values: np.ndarray, percentile: float = 90.0) -> float:
    """Symmetric colour limit: the ``percentile`` of |gain|, so a few outliers are clipped
    (and marked) instead of setting the scale for every other cell."""
    finite = np.abs(np.asarray(values, dtype=float))
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 1e-12
    limit = float(np.percentile(finite, percentile))
    return limit if limit > 0 else (float(finite.max()) or 1e-12)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _gain_bar(bar, limit: float) -> None:
    """The colour bar's label and ticks: each tick its own value (no "1e-6" offset above the
    bar, where it would run into the figure's title)."""
    from matplotlib.ticker import FuncFormatter

    bar.formatter = FuncFormatter(lambda value, _: _fmt(value))
    bar.update_ticks()
    bar.set_label(f"{GAIN_LABEL} (colours clipped at ±{_fmt(limit)})")


def _tweak_text(tweaks: TweakAxis, column: int) -> str:
    """A τ column as text: its value, or a bin's interval."""
    if tweaks.edges is None:
        return f"τ={tweaks.values[column]:g}"
    return f"τ {_fmt(tweaks.edges[column])}–{_fmt(tweaks.edges[column + 1])}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class HeatmapData:
    """What the heatmap drew: one (n_layers, n_tweak_columns) grid per panel, NaN = unexplored."""

    path: Path
    layers: np.ndarray
    tweaks: TweakAxis
    grids: dict[str, np.ndarray]
    limit: float
    clipped: dict[str, np.ndarray] = field(default_factory=dict)
    annotated: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    labels: dict[str, list[CellLabel]] = field(default_factory=dict)
    trials: dict[str, int] = field(default_factory=dict)  # complete trials behind each panel
    notes: dict[str, str] = field(default_factory=dict)  # what a panel's title warns of


def few_trials(n_trials: int, annotate: int) -> bool:
    """Too few trials to read a panel as a map: fewer than twice its labelled best cells, so
    that "the best" would be most of what ran."""
    return n_trials < 2 * max(annotate, 1)


def _layer_ticks(ax, n_layers: int, axis: str = "y") -> None:
    step = 1 if n_layers <= 36 else math.ceil(n_layers / 30)
    ticks = list(range(0, n_layers, step))
    (ax.set_yticks if axis == "y" else ax.set_xticks)(ticks, [str(t) for t in ticks], fontsize=7)


def _tweak_ticks(ax, axis: TweakAxis) -> None:
    if axis.edges is None:
        ax.set_xticks(range(axis.n), [f"{v:g}" for v in axis.values], fontsize=7)
    else:  # ticks on the bin edges: the bins read as intervals
        labels = [_fmt(e) for e in axis.edges]
        turn = 90 if axis.n > 10 else (45 if max(map(len, labels)) > 5 else 0)  # long log-bin edges would touch
        ax.set_xticks(np.arange(axis.n + 1) - 0.5, labels, fontsize=7, rotation=turn)


def draw_gain_heatmap(
    sites: pd.DataFrame,
    path: Path,
    *,
    n_layers: int,
    tweaks: TweakAxis,
    subject: str = "",
    annotate: int = 3,
    limit: float | None = None,
) -> HeatmapData:
    """Layer × τ grid of train mean gain (mean over the sites in a cell), one panel per
    (encoding, memory type), all on the same axes and one colour scale (``limit``, by default
    the cells' robust limit); the ``annotate`` best cells above zero of each panel carry their value."""
    plt = _plt()
    from matplotlib.patches import Patch

    grids, n_layers, counts = _panel_grids(sites, tweaks, n_layers)
    if limit is None:
        limit = robust_limit(np.concatenate([g.ravel() for g in grids.values()]))
    cmap = plt.get_cmap(CMAP).with_extremes(bad=UNEXPLORED)
    width = max(3.4, 0.34 * tweaks.n + 1.3)
    height = max(3.6, 0.2 * n_layers + 1.9)
    fig, axes = plt.subplots(
        1, len(grids), figsize=(max(7.0, width * len(grids) + 1.4), height), squeeze=False, sharey=True
    )
    data = HeatmapData(path, np.arange(n_layers), tweaks, grids, limit, trials=counts)
    image = None
    for ax, (name, grid) in zip(axes[0], grids.items()):
        image = _draw_panel(ax, name, grid, data, cmap, annotate)
    axes[0][0].set_ylabel("layer")
    bar = fig.colorbar(image, ax=list(axes[0]), extend="both", fraction=0.04, pad=0.02)
    _gain_bar(bar, limit)
    handles = [
        Patch(facecolor=UNEXPLORED, label="not explored"),
        Patch(facecolor="0.25", edgecolor="white", hatch="///", label=f"beyond ±{_fmt(limit)} (clipped)"),
    ]
    fig.legend(handles=handles, loc="lower left", ncol=2, fontsize=8, frameon=False, bbox_to_anchor=(0.0, 0.0))
    fig.suptitle(
        f"{subject + ': ' if subject else ''}{GAIN_LABEL} by layer and τ\n(mean over the trials in a cell; the best {annotate} above zero of each panel labelled)",
        fontsize=10,
    )
    fig.subplots_adjust(bottom=0.1 + 2.6 / (height * 6.4), top=1 - 1.0 / height, left=0.08, right=0.86, wspace=0.08)
    fig.set_dpi(110)  # the labels are fitted at the saved resolution
    for ax, (name, grid) in zip(axes[0], grids.items()):
        _label_panel(ax, name, grid, data, annotate)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)  # nothing cut at the edges
    plt.close(fig)
    return data


def _panel_grids(
    sites: pd.DataFrame, tweaks: TweakAxis, n_layers: int
) -> tuple[dict[str, np.ndarray], int, dict[str, int]]:
    """One (layers, τ columns) grid of mean gain per (encoding, memory type) panel, NaN where
    unexplored, the layer count (widened to the sites' deepest layer) and each panel's trials."""
    frame = sites.copy()
    frame["layer"] = frame["injection.layer"].astype(int)
    frame["column"] = [tweaks.column(float(t)) for t in frame["injection.tweak"]]
    keys = [k for k in ("memory.encoding", "memory.type") if k in frame]
    n_layers = max(n_layers, int(frame["layer"].max()) + 1)
    grids: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for name, group in frame.groupby(keys, sort=True) if keys else [((), frame)]:
        grid = np.full((n_layers, tweaks.n), np.nan)
        means = group.groupby(["layer", "column"])["mean_gain"].mean()
        for (layer, column), value in means.items():
            grid[layer, column] = value
        label = " / ".join(map(str, name if isinstance(name, tuple) else (name,)))
        grids[label] = grid
        counts[label] = int(group["trials"].sum()) if "trials" in group else len(group)
    return grids, n_layers, counts


def _draw_panel(ax, name: str, grid: np.ndarray, data: HeatmapData, cmap, annotate: int):
    """One panel: the grid on the shared scale, clipped cells hatched (recorded in ``data``), a
    note in the title when it has too few trials; returns the image for the colour bar."""
    from matplotlib.patches import Rectangle

    limit, tweaks, n_layers = data.limit, data.tweaks, len(data.layers)
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        aspect="auto",
        origin="lower",
        cmap=cmap,
        vmin=-limit,
        vmax=limit,
        interpolation="nearest",
    )
    clipped = np.isfinite(grid) & (np.abs(grid) > limit)
    data.clipped[name] = clipped
    for layer, column in zip(*np.nonzero(clipped)):
        ax.add_patch(
            Rectangle((column - 0.5, layer - 0.5), 1, 1, fill=False, hatch="///", edgecolor="white", linewidth=0.8)
        )
    n = data.trials.get(name, 0)
    if few_trials(n, annotate):
        data.notes[name] = f"only {n} trial{'s' if n != 1 else ''}: too few to read as a map"
    ax.set_title(
        name + (f"\n{data.notes[name]}" if name in data.notes else ""), fontsize=10 if name not in data.notes else 9
    )
    ax.set_xlabel("τ (tweak factor)" + (", binned" if tweaks.edges is not None else ""))
    _tweak_ticks(ax, tweaks)
    _layer_ticks(ax, n_layers)
    ax.set_xlim(-0.5, tweaks.n - 0.5)
    ax.set_ylim(-0.5, n_layers - 0.5)
    return image


def _label_panel(ax, name: str, grid: np.ndarray, data: HeatmapData, annotate: int) -> None:
    """The panel's best cells above zero, each label fitted in its cell; a label shown as its
    rank (no room for the value) gets its value in the panel's title."""
    cells = best_cells(grid, annotate)
    labels = label_cells(ax, grid, cells)
    data.labels[name] = labels
    data.annotated[name] = [(lab.layer, lab.column) for lab in labels]
    listed = [
        f"{rank}: L{lab.layer} {_tweak_text(data.tweaks, lab.column)} {format_gain(lab.value)}"
        for rank, lab in enumerate(labels, start=1)
        if lab.text != format_gain(lab.value)
    ]
    if listed:
        ax.set_title(ax.get_title() + "\n" + " · ".join(listed), fontsize=8)
