"""Asking trials: queued grid points first, or the sampler's points within the global budget,
and never a point the study already holds (given back unrun, at no budget: "no trial spent
twice"). A trial's sampled params are stored in one write."""

from __future__ import annotations

import bisect
import logging
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from ..search._settings import SweepSpec
from ..search._adaptive import enqueue_next_round, suggest_space
from ..search._study import ATTR_SURPLUS, DONE, canonical_params, counted, point_of
from ..store._storage import storage_lock
from ..store._optuna import ask_many, params_in_one_write, pop_queued_trial, storage_of
from ..store._recovery import recover_stale_trials
from ._run import Asked

__all__ = ["ask_trials", "repeats_of"]

log = logging.getLogger("meminject")


def _suggest(trial: optuna.Trial, space: Any) -> dict[str, Any]:
    """Sample every axis through the public suggest API (fixed params of a queued point win),
    the params stored in one write."""
    import optuna.distributions as od

    values = {}
    with params_in_one_write(trial):
        for axis in space.axes:
            d = axis.distribution
            if isinstance(d, od.CategoricalDistribution):
                values[axis.key] = trial.suggest_categorical(axis.key, d.choices)
            elif isinstance(d, od.IntDistribution):
                values[axis.key] = trial.suggest_int(axis.key, d.low, d.high, step=d.step, log=d.log)
            else:
                values[axis.key] = trial.suggest_float(axis.key, d.low, d.high, step=d.step, log=d.log)
    return values


def repeats_of(study: optuna.Study) -> int:
    """How many sampled points were given back unrun because the study already held them."""
    return sum(
        str(t.user_attrs.get(ATTR_SURPLUS, "")).startswith("duplicate")
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    )


def _give_back(study: optuna.Study, trial: optuna.Trial, why: str) -> None:
    trial.set_user_attr(ATTR_SURPLUS, why)
    study.tell(trial, state=TrialState.FAIL)


_POINTS: dict[tuple[str, int], str] = {}  # (study name, trial number) -> grid point: a trial's point never changes


def _earlier_holder(study: optuna.Study, trial: optuna.Trial, point: str) -> int | None:
    """The number of an earlier live trial holding the same grid point (two sweeps enqueued it
    at once), or None: the lowest-numbered live trial of a point runs it, later ones are given back."""
    for t in study.get_trials(deepcopy=False, states=(*DONE, TrialState.RUNNING, TrialState.WAITING)):
        if t.number >= trial.number or t.user_attrs.get(ATTR_SURPLUS):
            continue
        key = (study.study_name, t.number)
        if key not in _POINTS:
            _POINTS[key] = point_of(t)
        if _POINTS[key] == point:
            return t.number
    return None


def ask_trials(
    study: optuna.Study, spec: SweepSpec, space: Any, total: int, want: int, storage_url: str | None = None
) -> Asked:
    """Up to ``want`` trials for this worker: queued grid points, or new sampler suggestions
    within the global budget (a slot another worker took meanwhile is given back). An adaptive
    study's queue holds one round; when it is empty and no trial runs, the next is planned."""
    recover_stale_trials(study)  # a dead worker's trials: failed, their points re-queued
    if spec.sampler == "grid":
        return _ask_queued(study, space, total, want)
    if spec.sampler == "adaptive":
        wide = suggest_space(space)  # refined and grown τ lie between the ladder's values
        asked = _ask_queued(study, wide, total, want)
        if not asked and len(counted(study)) < total:
            with storage_lock(storage_url, storage_of(study)):  # one worker plans each round
                enqueue_next_round(study, spec, space)
            asked = _ask_queued(study, wide, total, want)
        return asked
    return _ask_sampled(study, space, total, want)


def _ask_queued(study: optuna.Study, space: Any, total: int, want: int) -> Asked:
    asked: Asked = []
    for _ in range(want):
        if len(counted(study)) >= total:  # a budget lowered below the queued points: they wait
            break
        trial = pop_queued_trial(study)
        if trial is None:
            break
        params = _suggest(trial, space)
        earlier = _earlier_holder(study, trial, canonical_params(params))
        if earlier is not None:  # enqueued twice (concurrent sweeps): the earlier trial runs it
            _give_back(study, trial, f"duplicate of trial {earlier}")
            continue
        asked.append((trial, params))
    return asked


_MAX_REPEATS = 200  # sampled points in a row already in the study before the space counts as used up


def _ask_sampled(study: optuna.Study, space: Any, total: int, want: int) -> Asked:
    """The sampler's next trials, created in one write; those beyond the global budget (other
    workers asked meanwhile: their trials are numbered first) are given back. A point the study
    already holds (done, pruned, running or queued) is given back unrun, at no budget, and the
    sampler asked again (TPE over discrete axes repeats points); after ``_MAX_REPEATS`` in a
    row the space is taken as used up and the worker stops, saying so."""
    asked: Asked = []
    repeats = 0
    while len(asked) < want:
        n = min(want - len(asked), total - len(counted(study)))
        if n <= 0:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": ours beats itself
            trials = ask_many(study, n)
        taken = sorted(t.number for t in counted(study))
        for trial in trials:
            if bisect.bisect_left(taken, trial.number) >= total:  # the budget was used up ahead of it
                _give_back(study, trial, "over budget")
                continue
            params = _suggest(trial, space)
            earlier = _earlier_holder(study, trial, canonical_params(params))
            if earlier is not None:
                _give_back(study, trial, f"duplicate of trial {earlier}")
                taken.remove(trial.number)  # given back: it no longer holds a slot
                repeats += 1
                continue
            repeats = 0
            asked.append((trial, params))
        if repeats >= _MAX_REPEATS:
            log.warning(
                "the sampler proposed %d points in a row that the study already holds: every point of "
                "this search space looks evaluated; widen a range (or add values) to search further",
                repeats,
            )
            break
    return asked
