"""Figures people would rather look at than read: the sweep's layer × τ heatmap and trial
scatter (drawn in :mod:`meminject._heatmap`), Optuna's history and importances, and
per-trial per-prompt gains. PNG, made with matplotlib's Agg backend."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._heatmap import (
    GAIN_LABEL,
    MAX_EXACT,
    HeatmapData,
    draw_gain_heatmap,
    robust_limit,
    tweak_axis,
)
from ._scatter import ScatterData, draw_trial_scatter

__all__ = [
    "gain_heatmaps",
    "trial_frame",
    "trial_scatter",
    "optuna_figures",
    "per_prompt_gains",
    "sweep_figures",
    "shared_limit",
    "pareto_figure",
    "GAIN_LABEL",
]

log = logging.getLogger("meminject")

# Optuna's importances (fANOVA: a random forest fitted to the trials) from a handful of trials
# are noise: below SKIP_IMPORTANCES complete trials the figure is not drawn, below
# FEW_FOR_IMPORTANCES it is drawn with a warning in its title (and a note on stderr).
SKIP_IMPORTANCES = 10
FEW_FOR_IMPORTANCES = 50


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tweak_search(study) -> dict[str, Any]:
    """How τ was searched, from the trials' Optuna distributions: an interval's bounds, or a
    grid's values, an integer range (``range(1, 16)``) included (nothing when τ was fixed)."""
    import optuna.distributions as od

    for trial in study.get_trials(deepcopy=False) if study is not None else []:
        dist = trial.distributions.get("injection.tweak")
        if isinstance(dist, od.CategoricalDistribution):
            choices = [float(c) for c in dist.choices]
            return {"choices": choices, "log": min(choices) > 0 and max(choices) / min(choices) >= LOG_RATIO}
        if isinstance(dist, od.IntDistribution) and not dist.log and (dist.high - dist.low) // dist.step < MAX_EXACT:
            return {"choices": [float(v) for v in range(dist.low, dist.high + 1, dist.step)], "log": False}
        if isinstance(dist, (od.FloatDistribution, od.IntDistribution)):
            return {"low": float(dist.low), "high": float(dist.high), "log": bool(dist.log)}
    return {}


LOG_RATIO = 50.0  # grid values spanning this ratio or more (logrange) are drawn on a log τ axis


def gain_heatmaps(
    sites: pd.DataFrame, path: Path, *, n_layers: int = 0, study=None, limit: float | None = None, subject: str = ""
) -> HeatmapData | None:
    """Layer × τ heatmap of train mean gain, one panel per (encoding, memory type): the paper's
    grid view, on every layer of the model (``n_layers``) and the searched τ interval."""
    if sites.empty or "injection.layer" not in sites or "injection.tweak" not in sites:
        return None
    tweaks = tweak_axis(sites["injection.tweak"].astype(float).tolist(), **_tweak_search(study))
    return draw_gain_heatmap(sites, path, n_layers=n_layers, tweaks=tweaks, limit=limit, subject=subject)


def trial_frame(study) -> pd.DataFrame:
    """One row per complete or pruned trial with a site: layer, τ, encoding, state and gain
    (``mean_gain`` of a complete trial; ``partial_mean_gain`` of a pruned one)."""
    from optuna.trial import TrialState

    from ..tracking._schema import from_attrs

    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        site = from_attrs(t.user_attrs)
        if not site or "injection.layer" not in site or "injection.tweak" not in site:
            continue
        complete = t.state == TrialState.COMPLETE
        gain = t.user_attrs.get("mean_gain", t.value) if complete else t.user_attrs.get("partial_mean_gain")
        rows.append(
            {
                "trial": t.number,
                "model": str(site.get("model", "-")),
                "state": "COMPLETE" if complete else "PRUNED",
                "layer": int(site["injection.layer"]),
                "tweak": float(site["injection.tweak"]),
                "encoding": str(site.get("memory.encoding", "-")),
                "memory_type": str(site.get("memory.type", "-")),
                "gain": np.nan if gain is None else float(gain),
            }
        )
    return pd.DataFrame(rows, columns=["trial", "model", "state", "layer", "tweak", "encoding", "memory_type", "gain"])


def trial_scatter(
    trials: pd.DataFrame, path: Path, *, n_layers: int = 0, study=None, limit: float | None = None, subject: str = ""
) -> ScatterData | None:
    """Every trial at (τ, layer), coloured by train mean gain; pruned trials as grey crosses."""
    if trials.empty:
        return None
    search = _tweak_search(study)
    log = bool(search.get("log"))
    span = (
        (search["low"], search["high"])
        if "low" in search
        else ((min(search["choices"]), max(search["choices"])) if "choices" in search else None)
    )
    return draw_trial_scatter(trials, path, n_layers=n_layers, tweak_range=span, limit=limit, subject=subject, log=log)


def optuna_figures(study, folder: Path, target: str = GAIN_LABEL) -> list[Path]:
    """Optuna's optimization history and (with 2+ searched parameters and enough trials)
    parameter importances, with the objective named (``target``) instead of Optuna's generic
    "Objective Value"; importances from few trials carry a warning (see FEW_FOR_IMPORTANCES)."""
    plt = _plt()
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState

    made = []
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    for name, make in (
        ("optimization_history.png", ovm.plot_optimization_history),
        ("param_importances.png", ovm.plot_param_importances),
    ):
        if name == "param_importances.png" and n_complete < SKIP_IMPORTANCES:
            log.info(
                "note: parameter importances skipped: %d complete trials (they need %d or more)",
                n_complete,
                SKIP_IMPORTANCES,
            )
            continue
        try:
            with plt.rc_context():  # Optuna sets the ggplot style globally: keep it to its own figures
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                    ax = make(study, target_name=target)
                if name == "param_importances.png" and ax.get_legend() is not None:
                    ax.get_legend().remove()  # one series named after the objective: the title says it
                    for loc in ("left", "center", "right"):
                        ax.set_title("", loc=loc)
                    title = f"importance of each searched parameter for the {target}"
                    if n_complete < FEW_FOR_IMPORTANCES:
                        title += f"\nonly {n_complete} trials: a rough hint, not a ranking (noisy below {FEW_FOR_IMPORTANCES})"
                        log.warning(
                            "note: parameter importances from %d trials are a rough hint (noisy below %d)",
                            n_complete,
                            FEW_FOR_IMPORTANCES,
                        )
                    ax.set_title(
                        title, fontsize=10, color="black" if n_complete >= FEW_FOR_IMPORTANCES else "firebrick"
                    )
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


def sweep_figures(
    study,
    sites: pd.DataFrame,
    folder: Path,
    n_layers: int = 0,
    target: str = GAIN_LABEL,
    layers_of: dict[str, int] | None = None,
) -> list[Path]:
    """All sweep-level figures into ``folder``; returns the files made. ``n_layers``: the
    model's layer count, so the layer axes show every layer, explored or not. A study with a
    model axis gets one heatmap and one scatter per model (``gain_heatmap_<model>.png``; each on
    its own layers, from ``layers_of``), all on the sweep's one colour scale."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    trials = trial_frame(study)
    limit = shared_limit(trials, sites)
    models = sorted(sites["model"].astype(str).unique()) if "model" in sites.columns else []
    parts = [(m, f"_{m}") for m in models] if len(models) > 1 else [(None, "")]
    for model, suffix in parts:
        rows = sites if model is None else sites[sites["model"].astype(str) == model]
        runs = trials if model is None else trials[trials["model"] == model]
        layers = n_layers if model is None else (layers_of or {}).get(model, 0)
        named = {"n_layers": layers, "study": study, "limit": limit, "subject": model or ""}  # a model's figure says so
        heat = gain_heatmaps(rows, folder / f"gain_heatmap{suffix}.png", **named)
        if heat is not None:
            made.append(heat.path)
        scatter = trial_scatter(runs, folder / f"trials_scatter{suffix}.png", **named)
        if scatter is not None:
            made.append(scatter.path)
    made += optuna_figures(study, folder, target)
    return made


def shared_limit(trials: pd.DataFrame, sites: pd.DataFrame) -> float | None:
    """One colour limit for a sweep's heatmap and scatter: the robust limit of its complete
    trials' gains (the heatmap's cells are means of those), else of its sites' (None: neither)."""
    complete = trials[trials["state"] == "COMPLETE"]["gain"] if not trials.empty else pd.Series(dtype=float)
    if complete.notna().any():
        return robust_limit(complete.to_numpy(dtype=float))
    if not sites.empty and "mean_gain" in sites:
        return robust_limit(sites["mean_gain"].to_numpy(dtype=float))
    return None


def pareto_figure(ranked: pd.DataFrame, heldout: pd.DataFrame | None, path: Path, spec: Any = None) -> Path | None:
    """Gain against damage for every site (left, damage on a log axis), and the Pareto front
    zoomed (right): the train front joined, each front site's held-out point with its 95%
    intervals beside its train point, numbered by its rank in `best`'s table."""
    if ranked.empty or "mean_damage" not in ranked or "pareto" not in ranked:
        return None
    plt = _plt()
    fig, (whole, zoom) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1, 1.3]})
    front = _draw_sites(ranked, whole, zoom)
    lows, highs = [front["mean_gain"].min()], [front["mean_gain"].max()]
    right = float(front["mean_damage"].max())
    if heldout is not None and not heldout.empty and "heldout_damage" in heldout:
        right = _draw_heldout(heldout, zoom, lows, highs, right)
    pad = 0.08 * (max(highs) - min(lows) or 1e-3)
    zoom.set_ylim(min(lows) - pad, max(highs) + pad)
    zoom.set_xlim(-0.03 * right, 1.08 * right)
    zoom.set_title("the Pareto front, zoomed: train (blue) and held-out (orange)", fontsize=10)
    for ax in (whole, zoom):
        ax.set_xlabel("mean damage: KL of the rest of the next-token distribution")
    whole.set_ylabel("mean gain (train)")
    zoom.legend(fontsize=8, loc="lower right")
    study = f"{spec.study_name}: " if spec is not None else ""
    fig.suptitle(
        f"{study}answer-probability gain against collateral damage, per site (lower damage is gentler)", fontsize=11
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw_sites(ranked: pd.DataFrame, whole, zoom) -> pd.DataFrame:
    """Every site on both panels, the train front joined; the left panel's log damage axis.
    Returns the front, by damage."""
    rest = ranked[~ranked["pareto"].astype(bool)]
    front = ranked[ranked["pareto"].astype(bool)].sort_values("mean_damage")
    tiny = max(
        float(ranked["mean_damage"][ranked["mean_damage"] > 0].min()) if (ranked["mean_damage"] > 0).any() else 1e-6,
        1e-9,
    )
    for ax in (whole, zoom):
        ax.scatter(
            rest["mean_damage"], rest["mean_gain"], s=14, color="0.7", label=f"other sites ({len(rest)})", zorder=1
        )
        ax.plot(
            front["mean_damage"],
            front["mean_gain"],
            "-o",
            color="tab:blue",
            markersize=5,
            label=f"train Pareto front ({len(front)})",
            zorder=3,
        )
        ax.axhline(0, color="black", linewidth=0.6)
    whole.set_xscale("log")  # damage spans decades; a τ=0 point (damage 0) sits at the left edge
    whole.set_xlim(left=tiny / 2)
    whole.scatter(
        np.full(int((ranked["mean_damage"] <= 0).sum()), tiny / 2),
        ranked.loc[ranked["mean_damage"] <= 0, "mean_gain"],
        s=14,
        color="0.7",
        clip_on=False,
    )
    whole.set_title("every site (damage on a log scale)", fontsize=10)
    return front


def _draw_heldout(heldout: pd.DataFrame, zoom, lows: list[float], highs: list[float], right: float) -> float:
    """Each front site's held-out point with its 95% intervals, tied to its numbered train point;
    widens ``lows``/``highs`` to the intervals and returns the zoom's right damage edge."""
    for _, r in heldout.iterrows():
        zoom.plot(
            [r["train_damage"], r["heldout_damage"]],
            [r["train_gain"], r["heldout_gain"]],
            color="tab:orange",
            linewidth=0.6,
            alpha=0.7,
            zorder=2,
        )
        zoom.annotate(
            str(int(r["rank"])),
            (r["train_damage"], r["train_gain"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
            color="tab:blue",
        )
    zoom.errorbar(
        heldout["heldout_damage"],
        heldout["heldout_gain"],
        xerr=[
            heldout["heldout_damage"] - heldout["heldout_damage_ci_low"],
            heldout["heldout_damage_ci_high"] - heldout["heldout_damage"],
        ],
        yerr=[
            heldout["heldout_gain"] - heldout["heldout_ci_low"],
            heldout["heldout_ci_high"] - heldout["heldout_gain"],
        ],
        fmt="D",
        color="tab:orange",
        markersize=4,
        elinewidth=0.7,
        capsize=2,
        label="held-out, 95% intervals (number: rank in best)",
        zorder=4,
    )
    lows.append(heldout["heldout_ci_low"].min())
    highs.append(heldout["heldout_ci_high"].max())
    return max(right, float(heldout["heldout_damage_ci_high"].max()))
