"""``sampler=adaptive``: a search in rounds that needs no hand-sized grid.

* **coarse** (round 0): every layer of the layer axis × the preset's coarse τ ladder (and the
  other axes), each trial evaluated under successive halving over prompts (``pruner=halving``:
  the prompts in one seeded order, the running mean checked at geometric checkpoints, the
  top third kept at each);
* **refine** (rounds 1, 2, ...): around each of the ``keep`` best complete trials, τ half a
  ladder step up and down in log τ (a quarter in round 2, an eighth in round 3, no finer:
  ``REFINE_LEVELS``), and the neighbouring layers at its τ;
* **grow**: a best trial at the top (bottom) of the τ searched at its layer, at or past the
  ladder's end, adds τ × ratio (τ / ratio), so a range that stopped too early extends itself;
  it stops when the objective turns down (the extension is worse, so the best trial is no
  longer on the edge), when the best trial breaks a ``constraint=mean_damage<=δ``, or after
  ``GROW_STEPS`` ladder steps past either end;
* **stop**: when a round leaves the top ``keep`` unchanged, after ``adaptive_rounds`` rounds,
  when a round has no new point, or when the budget (``n_trials``) is spent.

Rounds are barriers: the next is planned, under the storage lock, by the first worker that
finds the queue empty and no trial running, from the finished trials alone, so any worker
(and a resumed study) plans the same round. A point the study already holds is never
queued again. Each trial carries its phase and round (``meminject.phase``,
``meminject.round``); its fidelity is the ``n_prompts`` it evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import optuna
import optuna.distributions as od
from optuna.trial import FrozenTrial, TrialState

from ..core._errors import ConfigError
from ..tracking._schema import ATTR_PHASE, ATTR_ROUND, ATTR_SURPLUS
from ._grid import DONE, canonical_params, grid_points, point_of, pruned_grid_order
from ._settings import SweepSpec
from ._space import Axis, SearchSpace, parse_axis

__all__ = [
    "Ladder",
    "ladder_of",
    "suggest_space",
    "plan_round",
    "enqueue_next_round",
    "GROW_STEPS",
    "REFINE_LEVELS",
    "Cell",
]

TAU, LAYER = "injection.tweak", "injection.layer"
GROW_STEPS = 4  # ladder steps a range may grow past either end
REFINE_LEVELS = 3  # τ refined to 1/2, 1/4, 1/8 of a ladder step (in log τ), then only layers and growth


@dataclass(frozen=True)
class Ladder:
    """The coarse τ ladder (ascending, log-spaced) and its step ratio."""

    values: tuple[float, ...]

    @property
    def ratio(self) -> float:
        return (self.values[-1] / self.values[0]) ** (1.0 / (len(self.values) - 1))

    @property
    def bounds(self) -> tuple[float, float]:
        """How far τ may grow: ``GROW_STEPS`` ladder steps past either end."""
        return self.values[0] / self.ratio**GROW_STEPS, self.values[-1] * self.ratio**GROW_STEPS


def ladder_of(space: SearchSpace) -> Ladder:
    """The τ axis as a ladder; one line naming what to give otherwise."""
    axis = next((a for a in space.axes if a.key == TAU), None)
    values = sorted(float(v) for v in (axis.discrete_values or [])) if axis is not None else []
    if len(values) < 2 or values[0] <= 0:
        given = f"{TAU}={axis.expression}" if axis is not None else f"no {TAU} axis"
        raise ConfigError(
            f"sampler=adaptive grows a ladder of positive τ values, but the sweep has {given}; "
            f"give {TAU}='logrange(LOW, HIGH, COUNT)', e.g. logrange(0.01, 1, 5)"
        )
    if LAYER not in space.keys:
        raise ConfigError(f"sampler=adaptive searches the layer: give {LAYER}='range(0,all)' (or a ladder of layers)")
    return Ladder(tuple(values))


def searched_params(spec: SweepSpec) -> dict[str, str]:
    """The axes as searched: for an adaptive sweep, τ over the whole lattice it may grow to
    (``GROW_STEPS`` ladder steps past either end), so ``best`` marks a τ on an edge only when
    growth hit its bound; for any other sweep, the sweep's own axes."""
    if spec.sampler != "adaptive" or TAU not in spec.params:
        return spec.params
    ladder = Ladder(tuple(sorted(float(v) for v in parse_axis(TAU, spec.params[TAU]).discrete_values or [])))
    low, high = ladder.bounds
    count = len(ladder.values) + 2 * GROW_STEPS
    return {**spec.params, TAU: f"logrange({_on_lattice(low, ladder):.6g}, {_on_lattice(high, ladder):.6g}, {count})"}


def suggest_space(space: SearchSpace) -> SearchSpace:
    """The space an adaptive trial's params are stored in: τ log-continuous over the ladder's
    growth bounds, the layer every integer between the axis's ends; the other axes as given."""
    low, high = ladder_of(space).bounds
    layers = [int(v) for v in next(a for a in space.axes if a.key == LAYER).discrete_values or []]
    wide = {TAU: od.FloatDistribution(low, high, log=True), LAYER: od.IntDistribution(min(layers), max(layers))}
    return SearchSpace([Axis(a.key, a.expression, wide.get(a.key, a.distribution)) for a in space.axes])


@dataclass(frozen=True)
class Cell:
    """A finished trial as the planner reads it."""

    params: dict[str, Any]
    value: float | None  # None: pruned
    round: int
    damage: float | None = None

    @classmethod
    def of(cls, trial: FrozenTrial) -> "Cell":
        damage = trial.user_attrs.get("mean_damage")
        return cls(
            dict(trial.params),
            trial.value if trial.state == TrialState.COMPLETE else None,
            int(trial.user_attrs.get(ATTR_ROUND, 0)),
            None if damage is None else float(damage),
        )


def _top(cells: Sequence[Cell], keep: int, maximize: bool) -> list[Cell]:
    complete = [c for c in cells if c.value is not None]
    return sorted(complete, key=lambda c: (-c.value if maximize else c.value, canonical_params(c.params)))[:keep]


def _signature(cells: Sequence[Cell]) -> list[str]:
    return [canonical_params(c.params) for c in cells]


def _rest(params: dict[str, Any]) -> str:
    """The cell's other axes (encoding, ...): τ and the layer left out."""
    return canonical_params({k: v for k, v in params.items() if k not in (TAU, LAYER)})


def plan_round(
    spec: SweepSpec, space: SearchSpace, cells: Sequence[Cell]
) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
    """The next round and its (phase, point) list, from the finished trials (an empty list:
    the search has stopped). A pure function of its inputs: every worker plans the same."""
    if not cells:
        return 0, [("coarse", p) for p in grid_points(spec, space)]
    ladder = ladder_of(space)
    last = max(c.round for c in cells)
    maximize = spec.direction == "maximize"
    keep = spec.adaptive_keep
    top = _top(cells, keep, maximize)
    before = _top([c for c in cells if c.round < last], keep, maximize)
    if last >= spec.adaptive_rounds or (last >= 1 and _signature(top) == _signature(before)):
        return last + 1, []
    layers = [int(v) for v in next(a for a in space.axes if a.key == LAYER).discrete_values or []]
    low_layer, high_layer = min(layers), max(layers)
    low_tau, high_tau = ladder.bounds
    step = math.log(ladder.ratio) / 2 ** (last + 1)  # a half step of the previous round's spacing
    bound = spec.bound()
    taus: dict[tuple[int, str], list[float]] = {}
    for c in cells:
        taus.setdefault((int(c.params[LAYER]), _rest(c.params)), []).append(float(c.params[TAU]))
    held = {canonical_params(c.params) for c in cells}
    planned: dict[str, tuple[str, dict[str, Any]]] = {}

    def add(phase: str, params: dict[str, Any]) -> None:
        tau = float(params[TAU])
        if not (low_tau * (1 - 1e-9) <= tau <= high_tau * (1 + 1e-9)) or not low_layer <= params[LAYER] <= high_layer:
            return
        point = {**params, TAU: _on_lattice(tau, ladder)}
        key = canonical_params(point)
        if key not in held and key not in planned:
            planned[key] = (phase, point)

    for cell in top:
        layer, tau = int(cell.params[LAYER]), float(cell.params[TAU])
        for sign in (-1, 1):
            if last + 1 <= REFINE_LEVELS:
                add("refine", {**cell.params, TAU: tau * math.exp(sign * step)})
            add("refine", {**cell.params, LAYER: layer + sign})
        damaged = bound is not None and bound[0] == "mean_damage" and cell.damage is not None and cell.damage > bound[2]
        searched = taus[(layer, _rest(cell.params))]
        if damaged:
            continue
        if tau >= max(searched) and tau >= ladder.values[-1] * (1 - 1e-9):
            add("grow", {**cell.params, TAU: tau * ladder.ratio})
        if tau <= min(searched) and tau <= ladder.values[0] * (1 + 1e-9):
            add("grow", {**cell.params, TAU: tau / ladder.ratio})
    return last + 1, list(planned.values())


def _on_lattice(tau: float, ladder: Ladder) -> float:
    """τ snapped to the ladder's lattice (steps of 1/2^REFINE_LEVELS of a ladder step in log τ),
    so the same point reached two ways (up from one cell, down from another) is one point."""
    per = 2**REFINE_LEVELS
    k = round(per * math.log(tau / ladder.values[0]) / math.log(ladder.ratio))
    return float(f"{ladder.values[0] * ladder.ratio ** (k / per):.6g}")


def enqueue_next_round(study: optuna.Study, spec: SweepSpec, space: SearchSpace) -> int:
    """Queue the next round unless trials of this one are still queued or running; returns how
    many points were queued (0: wait, or the search has stopped). Call under the storage lock."""
    trials = study.get_trials(deepcopy=False)
    live = (TrialState.RUNNING, TrialState.WAITING)
    if any(t.state in live and not t.user_attrs.get(ATTR_SURPLUS) for t in trials):
        return 0
    cells = [Cell.of(t) for t in trials if t.state in DONE]
    number, points = plan_round(spec, space, cells)
    held = {point_of(t) for t in trials if t.state in (*DONE, *live) and not t.user_attrs.get(ATTR_SURPLUS)}
    phases = {canonical_params(p): phase for phase, p in points}
    queued = 0
    for point in pruned_grid_order([p for _, p in points], spec.seed + number):
        key = canonical_params(point)
        if key in held:
            continue
        study.enqueue_trial(point, user_attrs={ATTR_PHASE: phases[key], ATTR_ROUND: number}, skip_if_exists=False)
        queued += 1
    return queued
