"""Models side by side: ``best``'s per-model ranking, and the cross-model depth figure.

A study with a model axis (``model=choice(smollm2-135m, gemma3-270m)``) ranks its sites overall
and within each model, and judges each model's top sites on held-out prompts with that model's
controls. The figure puts models of different depths on one axis, the relative depth of the
layer (:func:`meminject.config.relative_depth`): per model and layer, the best τ on the train
part (from a grid, or whatever the study sampled), its train and held-out mean gain, and the
verdicts of ``best``'s held-out check marked where they fall.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..tracking._schema import site_config
from ._figures import _plt
from ._tables import format_table

__all__ = ["several_models", "per_model_top", "format_per_model", "depth_curve", "depth_figure"]


def several_models(table: pd.DataFrame) -> bool:
    return "model" in table.columns and table["model"].nunique() > 1


def per_model_top(table: pd.DataFrame, top: int) -> pd.DataFrame:
    """The first ``top`` rows of each model of a ranked table, model by model (so a worker loads
    each model once), each model's rows in the table's order (``rank`` stays the overall rank)."""
    if not several_models(table):
        return table.head(top)
    return table.groupby("model", sort=False, group_keys=False).head(top).reset_index(drop=True)


def format_per_model(table: pd.DataFrame, top: int) -> str:
    """One ranked table per model (``rank``: within the model; ``overall``: in the whole study)."""
    blocks = []
    for model, rows in table.groupby("model", sort=False):
        rows = rows.head(top).rename(columns={"rank": "overall"}).reset_index(drop=True)
        rows.insert(0, "rank", range(1, len(rows) + 1))
        blocks.append(f"{model}:\n{format_table(rows.drop(columns='overall'))}")
    return "\n".join(blocks)


def depth_curve(ranked: pd.DataFrame) -> pd.DataFrame:
    """Per model and layer, the best point of the correct memory (``ranked`` is best first, one
    row per point, with the ``depth`` column): the line the figure draws."""
    if ranked.empty or "depth" not in ranked.columns:
        return pd.DataFrame()
    rows = ranked[ranked["memory.type"] == "correct"] if "memory.type" in ranked.columns else ranked
    best = rows.drop_duplicates(["model", "injection.layer"], keep="first")
    return best.sort_values(["model", "depth"], kind="stable").reset_index(drop=True)


def heldout_gains(overrides: Sequence[str], curve: pd.DataFrame, axes: Sequence[str], runner: Any) -> list[float]:
    """The held-out mean gain of each point of the curve (no controls: the verdicts have them)."""
    base = [o for o in overrides if not o.startswith("data.part=")]
    gains = []
    for _, row in curve.iterrows():
        cfg = site_config(base, row.to_dict(), with_model="model" in axes, extra=["data.part=heldout"])
        _, _, result = runner.run(cfg)
        gains.append(float(result.per_prompt["gain"].mean()))
    return gains


def depth_figure(curve: pd.DataFrame, report: pd.DataFrame | None, path: Path, title: str) -> Path:
    """Train (dashed) and held-out (solid) mean gain against relative depth, one colour per model;
    ``best``'s judged sites marked by verdict (filled star: holds; cross: does not)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 4.6), constrained_layout=True)
    colours = plt.get_cmap("tab10")
    for i, (model, rows) in enumerate(curve.groupby("model", sort=False)):
        colour = colours(i % 10)
        n = len(rows)
        ax.plot(rows["depth"], rows["mean_gain"], ls="--", lw=1.2, color=colour, alpha=0.8, label=f"{model}: train")
        ax.plot(
            rows["depth"], rows["heldout_gain"], ls="-", lw=1.8, marker="o", ms=3, color=colour,
            label=f"{model}: held-out ({n} layers, best τ each)",
        )  # fmt: skip
        if report is None or report.empty or "model" not in report.columns:
            continue
        judged = report[report["model"] == model]
        holds = judged["verdict"] == "holds"
        depths = judged["depth"] if "depth" in judged.columns else pd.Series(np.nan, index=judged.index)
        ax.scatter(
            depths[holds], judged["heldout_gain"][holds], marker="*", s=160, color=colour, edgecolor="black", zorder=5
        )
        ax.scatter(depths[~holds], judged["heldout_gain"][~holds], marker="x", s=60, color=colour, zorder=5)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("relative depth of the layer (0 = first, 1 = last)")
    ax.set_ylabel("mean P(answer) gain")
    ax.set_title(title, fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    if report is not None and not report.empty:
        handles += [
            plt.Line2D([], [], ls="", marker="*", ms=11, color="grey", markeredgecolor="black"),
            plt.Line2D([], [], ls="", marker="x", ms=7, color="grey"),
        ]
        labels += ["judged by best: holds", "judged by best: does not hold"]
    ax.legend(handles, labels, fontsize=7, loc="best", framealpha=0.85)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
