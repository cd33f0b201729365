"""Where an adaptive search looked: every trial by layer and τ, one colour per round, its
marker by phase (coarse, refine, grow), its size by the prompts it evaluated (its fidelity),
filled when it completed and hollow when successive halving stopped it; the best trial ringed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ._figures import _plt

__all__ = ["phase_frame", "phase_figure"]

_MARKERS = {"coarse": "o", "refine": "s", "grow": "^"}


def phase_frame(trials: list) -> pd.DataFrame:
    """One row per finished adaptive trial: layer, τ, phase, round, prompts, complete, value."""
    from optuna.trial import TrialState

    from ..tracking._schema import ATTR_PHASE, ATTR_ROUND

    rows = [
        {
            "layer": int(t.params["injection.layer"]),
            "tweak": float(t.params["injection.tweak"]),
            "phase": str(t.user_attrs.get(ATTR_PHASE, "coarse")),
            "round": int(t.user_attrs.get(ATTR_ROUND, 0)),
            "n_prompts": int(t.user_attrs.get("n_prompts", 0)),
            "complete": t.state == TrialState.COMPLETE,
            "value": t.value if t.state == TrialState.COMPLETE else np.nan,
        }
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "injection.tweak" in t.params
    ]
    return pd.DataFrame(rows)


def phase_figure(frame: pd.DataFrame, path: Path, title: str, maximize: bool = True) -> Path | None:
    """The figure of :func:`phase_frame`'s rows; None when there is nothing to draw."""
    if frame.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.0, 4.8), constrained_layout=True)
    rounds = sorted(frame["round"].unique())
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, max(len(rounds), 2)))
    most = max(int(frame["n_prompts"].max()), 1)
    rng = np.random.default_rng(0)
    for colour, number in zip(colours, rounds):
        for phase, marker in _MARKERS.items():
            part = frame[(frame["round"] == number) & (frame["phase"] == phase)]
            if part.empty:
                continue
            x = part["layer"].to_numpy(float) + rng.uniform(-0.18, 0.18, len(part))  # repeats stay visible
            sizes = 14 + 110 * part["n_prompts"].to_numpy(float) / most
            done = part["complete"].to_numpy(bool)
            label = f"round {number}: {phase} ({len(part)}, {int(done.sum())} complete)"
            if done.any():
                ax.scatter(x[done], part["tweak"][done], s=sizes[done], marker=marker, color=colour, label=label)
            if (~done).any():
                hollow = {"facecolors": "none", "edgecolors": colour, "label": None if done.any() else label}
                ax.scatter(x[~done], part["tweak"][~done], s=sizes[~done], marker=marker, **hollow)
    complete = frame[frame["complete"]]
    if not complete.empty:
        best = complete.loc[complete["value"].idxmax() if maximize else complete["value"].idxmin()]
        ax.scatter(
            [best["layer"]],
            [best["tweak"]],
            s=340,
            facecolors="none",
            edgecolors="crimson",
            linewidths=2.0,
            label=f"best: L{int(best['layer'])} τ{best['tweak']:.3g} ({best['value']:+.4f})",
        )
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("τ (relative to the layer's residual norm)")
    ax.set_title(
        f"{title}\nmarker size: prompts evaluated (up to {most}); hollow: stopped by successive halving", fontsize=9
    )
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
