"""The bounded TPE (what ``sampler=tpe`` runs): TPE itself, suggestion for suggestion, while the
study is within its bound; beyond it, TPE sees exactly the best complete trials and the latest
others, whatever their order."""

from __future__ import annotations

import math

import optuna
import pytest

from meminject.sweep._optuna import BoundedTPESampler, _BoundedView

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _objective(trial: optuna.Trial) -> float:
    layer = trial.suggest_int("layer", 0, 11)
    tweak = trial.suggest_float("tweak", 0.005, 1.0, log=True)
    encoding = trial.suggest_categorical("encoding", ["unembed", "embed", "layer"])
    return -(((layer - 7) / 4) ** 2) - math.log(tweak / 0.2) ** 2 + 0.3 * (encoding == "unembed")


def _history(sampler: optuna.samplers.BaseSampler, n: int, direction: str = "maximize") -> list[dict]:
    study = optuna.create_study(sampler=sampler, direction=direction)
    study.optimize(_objective, n_trials=n)
    return [t.params for t in study.trials]


def test_within_its_bound_it_is_tpe_itself():
    assert _history(BoundedTPESampler(seed=3, best=5, recent=35, n_startup_trials=5), 40) == _history(
        optuna.samplers.TPESampler(seed=3, n_startup_trials=5), 40
    )


def test_beyond_its_bound_it_diverges_from_tpe():
    bounded = _history(BoundedTPESampler(seed=3, best=3, recent=7, n_startup_trials=5), 40)
    assert bounded[:10] == _history(optuna.samplers.TPESampler(seed=3, n_startup_trials=5), 10)
    assert bounded != _history(optuna.samplers.TPESampler(seed=3, n_startup_trials=5), 40)


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_the_view_holds_the_best_complete_trials_and_the_latest_others(direction):
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(_objective, n_trials=30)
    sampler = BoundedTPESampler(best=3, recent=5)
    states = (optuna.trial.TrialState.COMPLETE,)
    seen = _BoundedView(study, sampler, number=30)._get_trials(deepcopy=False, states=states, use_cache=True)
    ranked = sorted(study.trials, key=lambda t: t.value, reverse=direction == "maximize")
    top = {t.number for t in ranked[:3]}
    latest = [t.number for t in study.trials if t.number not in top][-5:]
    assert {t.number for t in seen} == top | set(latest)
    assert [t.number for t in seen] == sorted(t.number for t in seen)  # in study order, as TPE expects
    assert len(seen) == 8


def test_a_multi_objective_study_is_passed_whole():
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=20)
    view = _BoundedView(study, BoundedTPESampler(best=2, recent=3), number=20)
    assert len(view._get_trials(deepcopy=False, states=None, use_cache=True)) == 20
