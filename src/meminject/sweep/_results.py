"""A study's results as tables: ranked sites, the best τ of each site, control gaps.

Rows are grouped by the site record (:data:`meminject.site.COLUMNS`), read back from each
complete trial's Optuna attributes, so the table has exactly the site's columns.
"""

from __future__ import annotations

import pandas as pd
import optuna
from optuna.trial import TrialState

from ..site import COLUMNS, from_attrs

__all__ = ["ranked_sites", "distinct_sites", "control_gaps", "format_table"]


def ranked_sites(study: optuna.Study, top: int | None = None) -> pd.DataFrame:
    """Complete trials grouped by injection site, best objective first."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        record = from_attrs(t.user_attrs)
        if not record:
            continue
        record.update({"mean_gain": t.user_attrs.get("mean_gain", t.value), "objective": t.value, "frac_improved": t.user_attrs.get("frac_improved"),
                       "mean_prob_after": t.user_attrs.get("mean_prob_after"), "mean_prob_before": t.user_attrs.get("mean_prob_before"), "trial": t.number})
        rows.append(record)
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    keys = [k for k in COLUMNS if k in frame.columns]
    frame[keys] = frame[keys].astype(object).where(frame[keys].notna(), "-")
    grouped = frame.groupby(keys, dropna=False, sort=False).agg(
        mean_gain=("mean_gain", "mean"), objective=("objective", "mean"), frac_improved=("frac_improved", "mean"), mean_prob_before=("mean_prob_before", "mean"),
        mean_prob_after=("mean_prob_after", "mean"), trials=("trial", "count"), best_trial=("trial", "min"),
    ).reset_index()
    ascending = study.direction == optuna.study.StudyDirection.MINIMIZE
    grouped = grouped.sort_values("objective", ascending=ascending, kind="stable").reset_index(drop=True)
    if (grouped["objective"] == grouped["mean_gain"]).all():
        grouped = grouped.drop(columns="objective")  # the objective is the mean gain: one column says it
    grouped.insert(0, "rank", range(1, len(grouped) + 1))
    return grouped.head(top) if top else grouped


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
        frame.loc[several, "control"] = frame.loc[several, "control"] + "/" + frame.loc[several, "memory.pos"].astype(str)
    controls = set(frame["control"])
    if "correct" not in controls or len(controls) < 2:
        return None
    keys = [k for k in COLUMNS if k in frame.columns and k not in ("memory.type", "memory.pos")]
    wide = frame.pivot_table(index=keys, columns="control", values="mean_gain", aggfunc="mean").reset_index()
    for control in sorted(controls - {"correct"}):
        wide[f"gap_{control}"] = wide["correct"] - wide[control]
    return wide.sort_values("correct", ascending=False, kind="stable").reset_index(drop=True)


def format_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "no complete trials yet"
    columns = ["rank", "model", "injection.layer", "injection.head", "injection.tweak", "memory.encoding", "memory.type", "memory.pos", "injection.site", "injection.positions", "objective", "mean_gain", "frac_improved", "trials"]
    shown = frame[[c for c in columns if c in frame.columns and not (c == "memory.pos" and (frame[c] == "-").all())]].rename(columns=lambda c: c.split(".")[-1])
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4f}")
