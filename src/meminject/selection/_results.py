"""A study's results as tables: ranked sites, the best τ of each site, control gaps.

Rows are grouped by the site record (:data:`meminject.site.COLUMNS`), read back from each
complete trial's Optuna attributes, so the table has exactly the site's columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import optuna
from optuna.trial import TrialState

from ..config import load_run_config, relative_depth
from ..core._errors import MemInjectError
from ..engine._models import model_shape
from ..tracking._schema import COLUMNS, from_attrs
from ..search._settings import SweepSpec
from ..search._study import stored_spec

__all__ = [
    "ranked_sites",
    "relative_depths",
    "n_layers_of",
    "distinct_sites",
    "control_gaps",
    "pareto_mask",
]


def ranked_sites(study: optuna.Study, top: int | None = None) -> pd.DataFrame:
    """Complete trials grouped by injection site, best objective first.

    A multi-objective study's table marks its Pareto-optimal sites (``pareto``) and lists them
    first; a constrained study's marks the sites within the bound (``feasible``), listed first.
    """
    spec = stored_spec(study)
    rows = _trial_rows(study)
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    keys = [k for k in COLUMNS if k in frame.columns]
    frame[keys] = frame[keys].astype(object).where(frame[keys].notna(), "-")
    grouped = (
        frame.groupby(keys, dropna=False, sort=False)
        .agg(
            mean_gain=("mean_gain", "mean"),
            objective=("objective", "mean"),
            mean_damage=("mean_damage", "mean"),
            specific_gain=("specific_gain", "mean"),
            shuffled_gain=("shuffled_gain", "mean"),
            frac_improved=("frac_improved", "mean"),
            mean_prob_before=("mean_prob_before", "mean"),
            mean_prob_after=("mean_prob_after", "mean"),
            trials=("trial", "count"),
            best_trial=("trial", "min"),
        )
        .reset_index()
    )
    if grouped["mean_damage"].isna().all():
        grouped = grouped.drop(columns="mean_damage")  # metric.damage=none
    if grouped["specific_gain"].isna().all():  # metric.specific=false: no shuffled copy ran
        grouped = grouped.drop(columns=["specific_gain", "shuffled_gain"])
    order = ["objective"]
    ascending = [study.directions[0] == optuna.study.StudyDirection.MINIMIZE]
    if spec is not None and spec.multi:
        grouped["pareto"] = pareto_mask(grouped[spec.all_objectives()].to_numpy(dtype=float), spec.all_directions())
        order, ascending = ["pareto", *order], [False, *ascending]
    if spec is not None and spec.bound() is not None:
        metric, op, bound = spec.bound()
        grouped["feasible"] = grouped[metric] <= bound if op == "<=" else grouped[metric] >= bound
        order, ascending = ["feasible", *order], [False, *ascending]
    grouped = grouped.sort_values(order, ascending=ascending, kind="stable").reset_index(drop=True)
    if any((grouped["objective"] == grouped[c]).all() for c in ("mean_gain", "specific_gain") if c in grouped):
        grouped = grouped.drop(columns="objective")  # the objective is a column already: one column says it
    grouped.insert(0, "rank", range(1, len(grouped) + 1))
    _insert_depth(grouped, spec)
    return grouped.head(top) if top else grouped


def _trial_rows(study: optuna.Study) -> list[dict]:
    """One row per complete trial: its site (from its attributes) and its metrics."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        record = from_attrs(t.user_attrs)
        if not record:
            continue
        attrs = t.user_attrs
        record.update(
            {
                "mean_gain": attrs.get("mean_gain", t.values[0]),
                "objective": t.values[0],
                "mean_damage": attrs.get("mean_damage"),
                "frac_improved": attrs.get("frac_improved"),
                "specific_gain": attrs.get("specific_gain", np.nan),
                "shuffled_gain": attrs.get("shuffled_gain", np.nan),
                "mean_prob_after": attrs.get("mean_prob_after"),
                "mean_prob_before": attrs.get("mean_prob_before"),
                "trial": t.number,
            }
        )
        rows.append(record)
    return rows


def _insert_depth(table: pd.DataFrame, spec: SweepSpec | None) -> None:
    """The ``depth`` column, after the layer's (when the table has a model and a layer)."""
    if "injection.layer" in table.columns and "model" in table.columns and spec is not None:
        table.insert(table.columns.get_loc("injection.layer") + 1, "depth", relative_depths(table, spec))


def relative_depths(table: pd.DataFrame, spec: SweepSpec) -> list[float]:
    """Each row's layer as a relative depth of its model (0 = first layer, 1 = last), so sites of
    models with other layer counts line up (``injection.depth`` is the axis that searches it)."""
    layers = {name: n_layers_of(spec, str(name)) for name in table["model"].unique()}
    return [
        relative_depth(int(layer), layers[model]) if layers[model] else float("nan")
        for model, layer in zip(table["model"], table["injection.layer"])
    ]


def n_layers_of(spec: SweepSpec, name: str) -> int | None:
    """The layer count of a study's model ``name``, from its config alone (None if not found)."""
    base = load_run_config(spec.overrides)
    if base.model.name != name:
        try:
            base = load_run_config([*spec.overrides, f"model={name}"])
        except MemInjectError:  # a model config renamed since: the depth column stays empty
            return None
    return int(model_shape(base.model)["n_layers"])


def pareto_mask(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """Rows not dominated by any other row (at least as good in every objective, better in one)."""
    signed = values * np.array([1.0 if d == "maximize" else -1.0 for d in directions])  # larger is better
    at_least = (signed[:, None, :] >= signed[None, :, :]).all(axis=2)
    better = (signed[:, None, :] > signed[None, :, :]).any(axis=2)
    dominated = (at_least & better).any(axis=0)  # row j is dominated when some row i beats it
    return ~dominated


def distinct_sites(table: pd.DataFrame) -> pd.DataFrame:
    """One row per site (everything but τ): its best τ. A continuous τ axis otherwise fills
    the top ranks with one site at nearby τ."""
    if table.empty:
        return table
    keys = [k for k in COLUMNS if k in table.columns and k != "injection.tweak"]
    best = table.drop_duplicates(keys, keep="first").reset_index(drop=True)  # the table is ranked: first = best
    best["rank"] = range(1, len(best) + 1)
    return best


def control_gaps(table: pd.DataFrame) -> pd.DataFrame | None:
    """Per site: the correct memory's mean gain minus each control's (same prompts, so the
    mean of the paired differences); None unless the study has correct and control trials.

    A control is its memory type, and its part of speech where the study has several
    (``pos/noun``, ``pos/top``: the paper's per-list conditions stay apart)."""
    if table.empty or "memory.type" not in table.columns:
        return None
    frame = table.copy()
    frame["control"] = frame["memory.type"].astype(str)
    if "memory.pos" in frame.columns:
        several = frame.groupby("control")["memory.pos"].transform("nunique") > 1
        frame.loc[several, "control"] = (
            frame.loc[several, "control"] + "/" + frame.loc[several, "memory.pos"].astype(str)
        )
    controls = set(frame["control"])
    if "correct" not in controls or len(controls) < 2:
        return None
    keys = [k for k in COLUMNS if k in frame.columns and k not in ("memory.type", "memory.pos")]
    wide = frame.pivot_table(index=keys, columns="control", values="mean_gain", aggfunc="mean").reset_index()
    for control in sorted(controls - {"correct"}):
        wide[f"gap_{control}"] = wide["correct"] - wide[control]
    return wide.sort_values("correct", ascending=False, kind="stable").reset_index(drop=True)
