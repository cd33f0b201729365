"""The bounded TPE (what ``sampler=tpe`` runs): TPE itself, suggestion for suggestion, while the
study is within its bound; beyond it, TPE sees exactly the best complete trials and the latest
others, whatever their order."""

from __future__ import annotations

import math

import optuna
import pytest

from meminject.search._samplers import BoundedTPESampler

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
def test_the_view_holds_the_best_complete_trials_and_the_latest_ones(direction):
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(_objective, n_trials=30)
    sampler = BoundedTPESampler(best=3, recent=5)
    states = (optuna.trial.TrialState.COMPLETE,)
    seen = sampler._view(study)._get_trials(deepcopy=False, states=states, use_cache=True)
    ranked = sorted(study.trials, key=lambda t: t.value, reverse=direction == "maximize")
    top = {t.number for t in ranked[:3]}
    assert {t.number for t in seen} == top | {25, 26, 27, 28, 29}
    assert [t.number for t in seen] == sorted(t.number for t in seen)  # in study order, as TPE expects
    # later trials update the best ones incrementally: the same answer as from scratch
    study.optimize(_objective, n_trials=40)
    seen = sampler._view(study)._get_trials(deepcopy=False, states=states, use_cache=True)
    ranked = sorted(study.trials, key=lambda t: t.value, reverse=direction == "maximize")
    assert {t.number for t in seen} == {t.number for t in ranked[:3]} | set(range(65, 70))


@pytest.mark.parametrize("first_look", ["with running trials", "finished trials only"])
def test_a_trial_running_when_first_seen_counts_once_it_completes(first_look):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(_objective, n_trials=12)
    held = study.ask()  # running while the sampler first looks
    held.suggest_int("layer", 0, 11)
    study.optimize(_objective, n_trials=10)
    sampler = BoundedTPESampler(best=2, recent=3)
    all_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    first = all_states if first_look == "with running trials" else (optuna.trial.TrialState.COMPLETE,)
    sampler._view(study)._get_trials(deepcopy=False, states=first, use_cache=False)
    study.tell(held, 99.0)  # it finishes, best of all
    seen = sampler._view(study)._get_trials(deepcopy=False, states=all_states, use_cache=False)
    assert held.number in {t.number for t in seen}


def test_a_multi_objective_study_is_passed_whole():
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=20)
    view = BoundedTPESampler(best=2, recent=3)._view(study)
    assert len(view._get_trials(deepcopy=False, states=None, use_cache=True)) == 20
