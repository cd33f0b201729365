"""The grid queue: a grid sweep's points, each equivalent point once, and their enqueueing.

:func:`grid_points` lists the grid with the memory keys a point's memory type ignores set to
their axis's first value (so equivalent points are one); :func:`pruned_grid_order` orders a
pruned grid layer by layer in seeded random order; :func:`enqueue_missing` queues the points
no trial holds yet, matched by :func:`canonical_params` (a trial's point: :func:`point_of`).
"""

from __future__ import annotations

import json
import random
from typing import Any

import optuna
import optuna.distributions as od
from optuna.trial import FrozenTrial, TrialState

from ..config import load_run_config
from ..engine._memories import relevant_keys
from ..tracking._schema import ATTR_SURPLUS
from ._settings import SweepSpec
from ._space import SearchSpace

__all__ = ["DONE", "canonical_params", "point_of", "first_value", "grid_points", "pruned_grid_order", "enqueue_missing"]

# A trial is done when it has its result: complete, or pruned (a pruned point is never re-run).
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def canonical_params(params: dict[str, Any]) -> str:
    return json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True, default=str)


def point_of(trial: FrozenTrial) -> str:
    """A trial's grid point: a WAITING trial holds it as enqueued fixed params."""
    params = (
        trial.params if trial.state != TrialState.WAITING else (trial.system_attrs.get("fixed_params") or trial.params)
    )
    return canonical_params(params)


def first_value(distribution: od.BaseDistribution) -> Any:
    return distribution.choices[0] if isinstance(distribution, od.CategoricalDistribution) else distribution.low


def grid_points(spec: SweepSpec, space: SearchSpace) -> list[dict[str, Any]]:
    """The grid, each equivalent point once: a memory key that the point's memory type ignores
    (memory.pos for the correct memory) takes its axis's first value, and repeats are dropped."""
    fixed_type = load_run_config(spec.overrides).memory.type  # composed once per process
    first = {a.key: first_value(a.distribution) for a in space.axes}
    seen: dict[str, dict[str, Any]] = {}
    for point in space.grid():
        kept = {f"memory.{k}" for k in relevant_keys(str(point.get("memory.type", fixed_type)))}
        point = {k: (first[k] if k.startswith("memory.") and k not in kept else v) for k, v in point.items()}
        seen.setdefault(canonical_params(point), point)
    return list(seen.values())


def pruned_grid_order(points: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The order a pruned grid runs in: its layers in seeded random order, each layer's points
    together (themselves shuffled).

    Random, because in the grid's own order (layer 0 first) the k-th best trial, every trial's
    reference, stays weak for long and little is pruned. Layer by layer, because a worker asks
    ``trials_per_forward`` queued points at once and points of one layer share each chunk's
    suffix pass: a chunk of ~10 prompts alone runs at 1.6-2.2× its share of a full pass, stacked
    at 0.9× (benchmarks/time_to_best.py runs the pruned grid with and without stacking).
    """
    rng = random.Random(seed)
    runs: dict[str, list[dict[str, Any]]] = {}
    for point in points:  # what Evaluator.evaluate_many stacks by: the layer and the positions
        runs.setdefault(repr((point.get("injection.layer"), point.get("injection.positions"))), []).append(point)
    keys = list(runs)
    rng.shuffle(keys)
    ordered = []
    for key in keys:
        rng.shuffle(runs[key])
        ordered += runs[key]
    return ordered


def enqueue_missing(study: optuna.Study, spec: SweepSpec, space: SearchSpace) -> None:
    points = grid_points(spec, space)
    if spec.n_trials is not None:
        points = points[: spec.n_trials]
    if spec.pruner != "none":
        points = pruned_grid_order(points, spec.seed)
    taken = {
        point_of(t)
        for t in study.get_trials(deepcopy=False, states=(*DONE, TrialState.RUNNING, TrialState.WAITING))
        if not t.user_attrs.get(ATTR_SURPLUS)
    }
    for point in points:
        if canonical_params(point) not in taken:
            study.enqueue_trial(point, skip_if_exists=False)
