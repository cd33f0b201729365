"""The sweep's trial scatter: every trial at its layer and τ, coloured by its gain on the
heatmap's scale (:mod:`._heatmap`, which holds the shared axes, colours and helpers); pruned
trials are small grey crosses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ._heatmap import CMAP, MARKERS, _fmt, _gain_bar, _layer_ticks, _plt, robust_limit

__all__ = ["ScatterData", "draw_trial_scatter"]


@dataclass
class ScatterData:
    """What the scatter drew: the complete trials (coloured) and the pruned ones (grey ×)."""

    path: Path
    complete: pd.DataFrame
    pruned: pd.DataFrame
    limit: float
    clipped: int


def draw_trial_scatter(
    trials: pd.DataFrame,
    path: Path,
    *,
    n_layers: int,
    tweak_range: tuple[float, float] | None = None,
    limit: float | None = None,
    subject: str = "",
    log: bool = False,
) -> ScatterData:
    """Every trial at (τ, layer): complete trials coloured by train mean gain on the heatmap's
    scale (``limit``; by default the trials' robust limit), one marker shape per encoding;
    pruned trials as small grey crosses (they never reached a full-data gain, so they are not coloured)."""
    plt = _plt()
    complete = trials[trials["state"] == "COMPLETE"]
    pruned = trials[trials["state"] == "PRUNED"]
    if limit is None:
        limit = robust_limit(complete["gain"].to_numpy(dtype=float)) if not complete.empty else 1e-12
    n_layers = max(n_layers, int(trials["layer"].max()) + 1) if not trials.empty else n_layers
    fig, ax = plt.subplots(figsize=(9.0, max(4.5, 0.17 * n_layers + 2.4)))
    points, handles, clipped = _scatter_trials(ax, complete, pruned, limit)
    if points is not None:
        bar = fig.colorbar(points, ax=ax, extend="both", fraction=0.035, pad=0.02)
        _gain_bar(bar, limit)
    if log:  # a log-uniform or logrange search: equal ratios read as equal steps
        ax.set_xscale("log")
    if tweak_range is not None and log and tweak_range[0] > 0:
        ax.set_xlim(tweak_range[0] / 1.15, tweak_range[1] * 1.15)
    elif tweak_range is not None:
        pad = 0.02 * (tweak_range[1] - tweak_range[0] or 1)
        ax.set_xlim(tweak_range[0] - pad, tweak_range[1] + pad)
    ax.set_ylim(-0.5, n_layers - 0.5)
    _layer_ticks(ax, n_layers)
    ax.grid(True, color="0.9", linewidth=0.6, zorder=0)
    ax.set_xlabel("τ (tweak factor)")
    ax.set_ylabel("layer")
    ax.set_title(
        f"{subject + ': ' if subject else ''}trials: {len(complete)} complete (coloured), {len(pruned)} pruned",
        fontsize=10,
    )
    if handles:
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.09),
            ncol=len(handles),
            fontsize=8,
            frameon=False,
            title="marker: encoding (trials)",
            title_fontsize=8,
        )
    fig.subplots_adjust(left=0.07, right=0.9, top=0.93, bottom=0.17)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)  # nothing cut at the edges
    plt.close(fig)
    return ScatterData(path, complete, pruned, limit, clipped)


def _scatter_trials(ax, complete: pd.DataFrame, pruned: pd.DataFrame, limit: float) -> tuple[object | None, list, int]:
    """The trials' markers: complete ones coloured (one shape per encoding), those beyond the
    colour limits ringed, pruned ones as grey crosses. Returns the coloured points (for the
    colour bar, None without complete trials), the legend handles and the count ringed."""
    from matplotlib.lines import Line2D

    handles = []
    points = None
    for encoding, group in complete.groupby("encoding", sort=True):
        marker = MARKERS.get(str(encoding), "D")
        points = ax.scatter(
            group["tweak"],
            group["layer"],
            c=group["gain"],
            cmap=CMAP,
            vmin=-limit,
            vmax=limit,
            marker=marker,
            s=46,
            edgecolors="0.2",
            linewidths=0.5,
            zorder=3,
        )
        handles.append(
            Line2D(
                [],
                [],
                marker=marker,
                linestyle="",
                markerfacecolor="white",
                markeredgecolor="0.2",
                label=f"{encoding} ({len(group)})",
            )
        )
    beyond = complete[np.abs(complete["gain"]) > limit]
    if not beyond.empty:
        ax.scatter(
            beyond["tweak"], beyond["layer"], s=130, facecolors="none", edgecolors="black", linewidths=1.0, zorder=4
        )
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                linestyle="",
                markersize=10,
                markerfacecolor="none",
                markeredgecolor="black",
                label=f"beyond ±{_fmt(limit)} (clipped)",
            )
        )
    if not pruned.empty:
        ax.scatter(pruned["tweak"], pruned["layer"], marker="x", s=18, color="0.55", linewidths=0.9, zorder=2)
        handles.append(Line2D([], [], marker="x", linestyle="", color="0.55", label=f"pruned ({len(pruned)})"))
    return points, handles, len(beyond)
