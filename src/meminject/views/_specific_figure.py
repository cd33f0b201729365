"""Correct against shuffled memory, layer by layer: how much of a site's gain is the right memory's.

For a study that measured the specific gain (``metric.specific``, ``objective=specific_gain``),
``best`` draws ``specific_by_layer.png``: at each layer, the τ with the best train specific gain,
and there the train gain with the correct memory, with another prompt's memory (shuffled), and
their paired difference (the specific gain, shaded). ``best``'s judged sites are marked with
their held-out gains. A layer where the two memory lines meet gains nothing from *which* entity
is injected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ._figures import _plt

__all__ = ["specific_curve", "specific_figure"]


def specific_curve(ranked: pd.DataFrame) -> pd.DataFrame:
    """Per (model, layer): the row of the best train specific gain (empty without that column)."""
    if ranked.empty or "specific_gain" not in ranked.columns or ranked["specific_gain"].isna().all():
        return pd.DataFrame()
    rows = ranked.dropna(subset=["specific_gain"])
    if "memory.type" in rows.columns:
        rows = rows[rows["memory.type"] == "correct"]
    keys = [k for k in ("model", "injection.layer") if k in rows.columns]
    best = rows.sort_values("specific_gain", ascending=False, kind="stable").drop_duplicates(keys)
    return best.sort_values(keys, kind="stable").reset_index(drop=True)


def specific_figure(curve: pd.DataFrame, report: pd.DataFrame | None, path: Path, title: str) -> Path:
    """One panel per model: correct and shuffled train gain by layer, the specific gain shaded,
    and the judged sites' held-out correct (filled) and shuffled (hollow) gains."""
    plt = _plt()
    models = list(curve["model"].unique()) if "model" in curve.columns else [None]
    fig, axes = plt.subplots(1, len(models), figsize=(6.4 * len(models), 4.4), constrained_layout=True, squeeze=False)
    for ax, model in zip(axes[0], models):
        _train_lines(ax, curve if model is None else curve[curve["model"] == model])
        _judged_sites(ax, _judged(report, model))
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel("layer")
        ax.xaxis.get_major_locator().set_params(integer=True)  # layers are whole numbers
        ax.set_ylabel("mean P(answer) gain")
        ax.set_title(str(model) if model is not None else "", fontsize=9)
        ax.legend(fontsize=6.5, loc="best", framealpha=0.85)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _train_lines(ax, rows: pd.DataFrame) -> None:
    """The correct and shuffled train gains at each layer's best τ (labelled), the gap shaded."""
    layers = rows["injection.layer"].astype(int).to_numpy()
    correct, shuffled = rows["mean_gain"].to_numpy(float), rows["shuffled_gain"].to_numpy(float)
    ax.fill_between(
        layers, shuffled, correct, color="tab:green", alpha=0.18, label="specific gain (correct − shuffled)"
    )
    ax.plot(layers, correct, marker="o", ms=3, lw=1.6, color="tab:blue", label="correct memory (train)")
    ax.plot(layers, shuffled, marker="o", ms=3, lw=1.4, ls="--", color="tab:orange", label="another prompt's memory (train)")  # fmt: skip
    for layer, tweak, value in zip(layers, rows["injection.tweak"], correct):
        ax.annotate(f"τ{float(tweak):.2g}", (layer, value), fontsize=6, xytext=(0, 4), textcoords="offset points", ha="center")  # fmt: skip


def _judged_sites(ax, judged: pd.DataFrame) -> None:
    """best's judged sites: held-out gain with the correct (filled) and shuffled (hollow) memory."""
    if judged.empty:
        return
    for column, face, edge, what in (
        ("heldout_gain", "tab:blue", "black", "correct"),
        ("heldout_shuffled_gain", "none", "tab:orange", "shuffled"),
    ):
        ax.scatter(judged["injection.layer"], judged[column], marker="D", s=36, facecolor=face, edgecolor=edge, zorder=5, label=f"judged site: held-out, {what}")  # fmt: skip
    for _, r in judged.iterrows():
        mark = "holds" if r["verdict"] == "holds" else "✗"
        ax.annotate(mark, (r["injection.layer"], r["heldout_gain"]), fontsize=7, xytext=(5, -3), textcoords="offset points")  # fmt: skip


def _judged(report: pd.DataFrame | None, model) -> pd.DataFrame:
    if report is None or report.empty or "heldout_shuffled_gain" not in report.columns:
        return pd.DataFrame()
    rows = report if model is None or "model" not in report.columns else report[report["model"] == model]
    return rows[np.isfinite(rows["heldout_shuffled_gain"].to_numpy(float))]
