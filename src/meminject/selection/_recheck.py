"""A lower-precision sweep ranks, float32 decides: `best` re-evaluates the top sites of a
bfloat16 (or float16) sweep in float32, on the sweep's own prompts, and ranks them by that.

bfloat16 keeps ~3 significant digits. Over the SmolLM2 paper grid its ranking agrees with
float32's (Spearman 0.9993, benchmarks/time_to_best.py), but neighbouring τ at one layer differ
by less than its error: its first site was float32's second. Re-evaluating the top ``top``
sites finds float32's best whenever it is among them, for ``top`` full evaluations.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..core._progress import progress_bar, stage
from ..tracking._schema import site_config, site_label
from ..runner._trial import TrialRunner

__all__ = ["float32_recheck"]

_SUMMARY = (
    "mean_gain",
    "specific_gain",
    "shuffled_gain",
    "mean_damage",
    "frac_improved",
    "mean_prob_before",
    "mean_prob_after",
)  # columns of ranked_sites a trial's summary gives


def float32_recheck(
    spec: Any, ranked: pd.DataFrame, dtype: str, top: int, runner: TrialRunner | None = None
) -> pd.DataFrame:
    """The first ``top`` rows of ``ranked`` (:func:`~meminject.selection.ranked_sites` of a ``dtype``
    sweep) re-evaluated in float32 on the sweep's prompts and ranked by that, then the rest as
    they were. In those rows every metric column holds float32's value; in every row the
    sweep's objective is in a column named ``dtype`` and its rank in ``sweep_rank``."""
    runner = runner or TrialRunner()
    sites, rest = ranked.head(top), ranked.iloc[top:]
    summaries = []
    stage(f"float32 re-check: the top {len(sites)} sites of a {dtype} sweep, on its prompts …")
    with progress_bar(len(sites), "float32 re-check", "eval") as bar:
        for _, site in sites.iterrows():
            bar.set_postfix_str(site_label(site.to_dict()), refresh=False)
            cfg = site_config(
                spec.overrides, site.to_dict(), with_model="model" in spec.params, extra=["model.dtype=float32"]
            )
            _, _, result = runner.run(cfg)
            summaries.append(result.summary)
            bar.update()
    table = sites.copy()
    objective = "objective" if "objective" in table.columns else spec.objective
    table["sweep_rank"] = table["rank"]
    table[dtype] = table[objective]
    for column in (*_SUMMARY, "objective"):
        if column in table.columns:
            key = spec.objective if column == "objective" else column
            table[column] = [float(s[key]) if key in s else float("nan") for s in summaries]
    keys = (["feasible"] if "feasible" in table.columns else []) + [
        objective
    ]  # a constrained study lists its feasible sites first
    table = table.sort_values(
        keys, ascending=[False] * (len(keys) - 1) + [spec.direction == "minimize"], kind="stable"
    ).reset_index(drop=True)
    table = pd.concat([table, rest.assign(sweep_rank=rest["rank"], **{dtype: rest[objective]})], ignore_index=True)
    table["rank"] = range(1, len(table) + 1)
    return table
