"""Ranked-site tables as the terminal shows them: the columns a reader compares, short names."""

from __future__ import annotations

import pandas as pd

__all__ = ["format_table"]


def format_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "no complete trials yet"
    columns = [
        "rank",
        "sweep_rank",
        "model",
        "injection.layer",
        "depth",
        "injection.head",
        "injection.tweak",
        "memory.encoding",
        "memory.type",
        "memory.pos",
        "injection.site",
        "injection.positions",
        "objective",
        "mean_gain",
        "specific_gain",
        "bfloat16",
        "float16",
        "mean_damage",
        "pareto",
        "feasible",
        "frac_improved",
        "trials",
        "tweak_edge",
    ]
    shown = frame[
        [c for c in columns if c in frame.columns and not (c == "memory.pos" and (frame[c] == "-").all())]
    ].rename(columns=lambda c: c.split(".")[-1])
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4f}")
