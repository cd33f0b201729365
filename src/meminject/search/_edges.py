"""Edges are said, not hidden: a top site whose τ is the smallest or largest value searched.

A best τ on the edge of its range says only that the range stopped there: the optimum may lie
beyond. :func:`tweak_edges` marks each row of a ranked table (``low``, ``high`` or empty) and
:func:`edge_notes` says, once per direction, which way to extend the range and with what
override. A τ that was not searched (a fixed ``injection.tweak``) has no edge.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import optuna.distributions as od
import pandas as pd

from ._space import parse_axis

__all__ = ["EDGE_COLUMN", "tweak_range", "tweak_edges", "with_edges", "edge_notes"]

EDGE_COLUMN = "tweak_edge"
_KEY = "injection.tweak"
_NEAR = 0.02  # a continuous τ within 2% of its (log) span from an end is on that edge


def tweak_range(params: dict[str, str]) -> tuple[float, float, bool, bool] | None:
    """The searched τ as (low, high, log, discrete), or None when τ is not an axis."""
    if _KEY not in params:
        return None
    distribution = parse_axis(_KEY, params[_KEY]).distribution
    if isinstance(distribution, od.CategoricalDistribution):
        values = [float(v) for v in distribution.choices]
        return min(values), max(values), min(values) > 0, True
    if isinstance(distribution, od.IntDistribution) and not distribution.log:
        return float(distribution.low), float(distribution.high), distribution.low > 0, True
    return float(distribution.low), float(distribution.high), bool(distribution.log), False


def _edge(tweak: float, low: float, high: float, log: bool, discrete: bool) -> str:
    if high <= low:  # a single value: nothing was searched around it
        return ""
    if discrete:
        return "low" if math.isclose(tweak, low) else "high" if math.isclose(tweak, high) else ""
    span = (math.log(high) - math.log(low)) if log else (high - low)
    position = ((math.log(tweak) - math.log(low)) if log else (tweak - low)) / span
    return "low" if position <= _NEAR else "high" if position >= 1 - _NEAR else ""


def tweak_edges(table: pd.DataFrame, params: dict[str, str]) -> list[str]:
    """Per row: ``low`` or ``high`` when its τ is at that end of the searched range, else ``""``."""
    searched = tweak_range(params)
    if searched is None or table.empty or _KEY not in table.columns:
        return [""] * len(table)
    return [_edge(float(t), *searched) for t in table[_KEY]]


def with_edges(table: pd.DataFrame, params: dict[str, str]) -> pd.DataFrame:
    """``table`` with the :data:`EDGE_COLUMN` column (left out when no row is on an edge)."""
    edges = tweak_edges(table, params)
    if not any(edges):
        return table.drop(columns=EDGE_COLUMN, errors="ignore")
    return table.assign(**{EDGE_COLUMN: edges})


def _extension(tweak: float, edge: str, params: dict[str, str]) -> str:
    """An override that searches past the edge: a log range from a factor 2 inside to 8 beyond."""
    low, high = (tweak / 8, tweak * 2) if edge == "low" else (tweak / 2, tweak * 8)
    discrete = tweak_range(params)[3]
    if discrete:
        return f"{_KEY}='logrange({low:.3g}, {high:.3g}, 9)'"
    return f"{_KEY}='tag(log, interval({low:.3g}, {high:.3g}))'"


def edge_notes(table: pd.DataFrame, params: dict[str, str], ranks: Sequence[Any] | None = None) -> list[str]:
    """One line per edge that a listed site sits on: which ranks, the value, the range, and the
    override that extends it that way."""
    if EDGE_COLUMN not in table.columns:
        return []
    ranks = (
        list(table["rank"]) if ranks is None and "rank" in table.columns else list(ranks or range(1, len(table) + 1))
    )
    lines = []
    for edge, word, way in (("high", "largest", "upward"), ("low", "smallest", "downward")):
        at = [(rank, float(t)) for rank, t, e in zip(ranks, table[_KEY], table[EDGE_COLUMN]) if e == edge]
        if not at:
            continue
        tweak = at[0][1]
        which = ", ".join(str(int(r)) for r, _ in at)
        lines.append(
            f"note: τ={tweak:.4g} of rank {which} is the {word} value searched ({_KEY}={params[_KEY]}): "
            f"the best may lie beyond it; extend the range {way}, e.g. {_extension(tweak, edge, params)}"
        )
    return lines
