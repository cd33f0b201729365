"""Figures people would rather look at than read: sweep heatmaps, Optuna's history and
importances, and per-trial per-prompt gains. PNG, made with matplotlib's Agg backend."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["gain_heatmaps", "optuna_figures", "per_prompt_gains", "sweep_figures"]

log = logging.getLogger("meminject")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def gain_heatmaps(sites: pd.DataFrame, path: Path) -> Path | None:
    """Layer × τ heatmap of mean gain, one panel per (encoding, memory type): the paper's grid view.

    Continuous τ (TPE) is binned into at most 12 intervals; empty cells stay blank.
    """
    if sites.empty or "injection.layer" not in sites or "injection.tweak" not in sites:
        return None
    plt = _plt()
    frame = sites.copy()
    frame["tweak"] = frame["injection.tweak"].astype(float)
    if frame["tweak"].nunique() > 15:
        frame["tweak"] = pd.cut(frame["tweak"], bins=min(12, frame["tweak"].nunique())).apply(lambda b: round(b.mid, 2)).astype(float)
    panels = list(frame.groupby(["memory.encoding", "memory.type"], sort=True))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    limit = float(np.nanmax(np.abs(frame["mean_gain"]))) or 1e-12
    for ax, ((encoding, kind), group) in zip(axes[0], panels):
        grid = group.pivot_table(index="injection.layer", columns="tweak", values="mean_gain", aggfunc="mean")
        image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", origin="lower", cmap="RdBu", vmin=-limit, vmax=limit)
        ax.set_title(f"{encoding} / {kind}", fontsize=10)
        ax.set_xlabel("tweak factor τ")
        ax.set_ylabel("layer")
        ax.set_xticks(range(grid.shape[1]), [f"{t:g}" for t in grid.columns], rotation=90, fontsize=7)
        ax.set_yticks(range(grid.shape[0]), [str(int(v)) for v in grid.index], fontsize=7)
        fig.colorbar(image, ax=ax, label="mean gain")
    fig.suptitle("mean answer-probability gain by layer and τ")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def optuna_figures(study, folder: Path) -> list[Path]:
    """Optuna's optimization history and (with 2+ searched parameters) parameter importances."""
    plt = _plt()
    import optuna.visualization.matplotlib as ovm

    made = []
    for name, make in (("optimization_history.png", ovm.plot_optimization_history), ("param_importances.png", ovm.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = make(study)
            ax.figure.set_size_inches(7, 4.5)
            ax.figure.tight_layout()
            ax.figure.savefig(folder / name, dpi=110)
            plt.close(ax.figure)
            made.append(folder / name)
        except Exception as exc:  # noqa: BLE001 - e.g. importances of a single parameter: skip that figure
            log.debug("figure %s skipped: %s", name, exc)
            plt.close("all")
    return made


def per_prompt_gains(per_prompt: pd.DataFrame, path: Path, title: str) -> Path:
    """One trial's per-prompt gains, sorted: how many prompts move, and by how much.

    Drawn on a bare Figure (no pyplot state to leak across thousands of trials) as two filled
    step areas, which cost the same for 40 prompts or 1,000.
    """
    from matplotlib.figure import Figure

    gains = np.sort(per_prompt["gain"].to_numpy(dtype=float))[::-1]
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    x = np.arange(len(gains))
    ax.fill_between(x, gains, 0, where=gains > 0, step="mid", color="tab:blue", linewidth=0, label="improved")
    ax.fill_between(x, gains, 0, where=gains <= 0, step="mid", color="tab:red", linewidth=0, label="not improved")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlim(-0.5, max(len(gains) - 0.5, 0.5))
    ax.set_xlabel("prompts, sorted by gain")
    ax.set_ylabel("P(answer) after − before")
    ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.15, right=0.98, bottom=0.15, top=0.9)
    fig.savefig(path, dpi=100)
    return path


def sweep_figures(study, sites: pd.DataFrame, folder: Path) -> list[Path]:
    """All sweep-level figures into ``folder``; returns the files made."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    heat = gain_heatmaps(sites, folder / "gain_heatmap.png")
    if heat is not None:
        made.append(heat)
    made += optuna_figures(study, folder)
    return made
