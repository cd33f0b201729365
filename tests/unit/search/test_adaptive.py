"""sampler=adaptive: the planner's rounds on hand-made results (coarse, refine, growth at both
edges and where it stops), the halving pruner, and whole studies on the tiny model: phases and
fidelity recorded in Optuna and MLflow, the figure, and a resume mid-round that ends where an
uninterrupted study does."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from conftest import load, mlflow_runs, sweep_args
from meminject.cli import main
from meminject.core._errors import ConfigError
from meminject.search._adaptive import GROW_STEPS, Cell, ladder_of, plan_round
from meminject.search._grid import canonical_params
from meminject.search._pruning import HalvingPruner
from meminject.search._settings import load_sweep
from meminject.search._space import log_values, parse_space

LADDER = tuple(log_values(0.01, 1, 5))  # logrange(0.01, 1, 5): 0.01, 0.03162, 0.1, 0.3162, 1
RATIO = math.sqrt(10)


def _spec(*extra: str):
    spec, _ = load_sweep(["sweep=adaptive", "model=tiny", *extra])
    return spec


def _space(layers: str = "range(0,4)"):
    return parse_space(
        {"injection.layer": layers, "injection.tweak": "logrange(0.01, 1, 5)", "memory.encoding": "choice(unembed)"}
    )


def _cells(value, taus=LADDER, layers=range(4), round_=0, damage=None):
    """Every (layer, τ) cell complete with ``value(layer, τ)``."""
    return [
        Cell(
            {"injection.layer": layer, "injection.tweak": tau, "memory.encoding": "unembed"},
            value(layer, tau),
            round_,
            damage,
        )
        for layer in layers
        for tau in taus
    ]


def _planned(spec, space, cells):
    number, points = plan_round(spec, space, cells)
    return number, {(phase, p["injection.layer"], round(p["injection.tweak"], 4)) for phase, p in points}


def test_the_first_round_is_every_layer_times_the_ladder():
    number, points = plan_round(_spec(), _space(), [])
    assert number == 0 and {phase for phase, _ in points} == {"coarse"}
    assert sorted((p["injection.layer"], p["injection.tweak"]) for _, p in points) == sorted(
        (layer, tau) for layer in range(4) for tau in LADDER
    )


def test_a_peak_inside_the_ladder_is_refined_in_tau_and_layer_and_not_grown():
    spec = _spec()
    spec.adaptive_keep = 1
    peak = lambda layer, tau: -abs(layer - 2) - abs(math.log10(tau) + 1)  # noqa: E731 - best at L2, τ 0.1
    number, planned = _planned(spec, _space(), _cells(peak))
    half = RATIO**0.5  # half a ladder step in log τ; the layers beside L2 at τ 0.1 are held already
    assert (number, planned) == (1, {("refine", 2, round(0.1 * half, 4)), ("refine", 2, round(0.1 / half, 4))})
    coarse_only_layers = [c for c in _cells(peak) if c.params["injection.layer"] != 1]
    _, planned = _planned(spec, _space(), coarse_only_layers)
    assert ("refine", 1, 0.1) in planned  # a neighbouring layer not yet searched


def test_the_range_grows_at_the_top_while_the_gain_rises_and_stops_when_it_turns_down():
    spec, space = _spec(), _space()
    spec.adaptive_keep = 1
    rising = lambda layer, tau: tau + 0.01 * layer  # noqa: E731 - best at L3, τ 1 (the ladder's top)
    cells = _cells(rising)
    _, planned = _planned(spec, space, cells)
    assert ("grow", 3, round(RATIO, 4)) in planned
    # the extension was better: it grows again from there
    up = Cell({"injection.layer": 3, "injection.tweak": round(RATIO, 6), "memory.encoding": "unembed"}, 9.0, 1)
    _, planned = _planned(spec, space, cells + [up])
    assert ("grow", 3, round(RATIO**2, 4)) in planned
    # the extension was worse: the best is no longer the edge, nothing grows
    down = Cell({"injection.layer": 3, "injection.tweak": round(RATIO, 6), "memory.encoding": "unembed"}, -1.0, 1)
    _, planned = _planned(spec, space, cells + [down])
    assert not any(phase == "grow" for phase, _, _ in planned)


def test_the_range_grows_at_the_bottom_too_and_never_past_its_bound():
    spec, space = _spec(), _space()
    spec.adaptive_keep = 1
    falling = lambda layer, tau: -tau - 0.01 * layer  # noqa: E731 - best at L0, τ 0.01 (the ladder's bottom)
    _, planned = _planned(spec, space, _cells(falling))
    assert ("grow", 0, round(0.01 / RATIO, 4)) in planned
    lowest = 0.01 / RATIO**GROW_STEPS
    edge = Cell({"injection.layer": 0, "injection.tweak": lowest, "memory.encoding": "unembed"}, 99.0, 4)
    _, planned = _planned(spec, space, _cells(falling) + [edge])
    assert not any(phase == "grow" for phase, _, _ in planned) and ladder_of(space).bounds[0] == pytest.approx(lowest)


def test_a_best_edge_over_the_damage_bound_does_not_grow():
    spec = _spec("constraint=mean_damage<=0.05")
    spec.adaptive_keep = 1
    rising = lambda layer, tau: tau  # noqa: E731
    _, planned = _planned(spec, _space(), _cells(rising, damage=0.2))
    assert planned and not any(phase == "grow" for phase, _, _ in planned)
    _, planned = _planned(spec, _space(), _cells(rising, damage=0.01))
    assert any(phase == "grow" for phase, _, _ in planned)


def test_it_stops_when_a_round_leaves_the_top_k_unchanged_or_after_its_rounds():
    spec, space = _spec(), _space()
    peak = lambda layer, tau: -abs(layer - 2) - abs(math.log10(tau) + 1)  # noqa: E731
    coarse = _cells(peak)
    number, points = plan_round(spec, space, coarse)
    assert number == 1 and points
    worse = [Cell(p, -100.0, 1) for _, p in points]  # round 1 found nothing better: the top 5 stand
    assert plan_round(spec, space, coarse + worse) == (2, [])
    better = [Cell(p, 100.0 + i, 1) for i, (_, p) in enumerate(points)]
    assert plan_round(spec, space, coarse + better)[1]
    spec.adaptive_rounds = 1
    assert plan_round(spec, space, coarse + better) == (2, [])


def test_a_point_reached_two_ways_is_one_point_and_a_held_point_is_not_planned_again():
    spec, space = _spec(), _space()
    spec.adaptive_keep = 2
    two = lambda layer, tau: 1.0 if (layer, tau) in ((1, LADDER[2]), (1, LADDER[3])) else 0.0  # noqa: E731
    cells = _cells(two)
    number, points = plan_round(spec, space, cells)
    keys = [canonical_params(p) for _, p in points]
    assert len(keys) == len(set(keys))
    held = {canonical_params(c.params) for c in cells}
    assert not held & set(keys)
    # round 2 from τ 0.1·√ratio and 0.316/√ratio (a quarter step each way): the same lattice
    cells += [Cell(p, 0.5, number) for _, p in points]
    _, later = plan_round(spec, space, cells)
    later_keys = [canonical_params(p) for _, p in later]
    assert len(later_keys) == len(set(later_keys)) and not set(later_keys) & {canonical_params(c.params) for c in cells}


def test_an_adaptive_sweep_needs_a_ladder_and_a_layer_axis(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="logrange"):
        ladder_of(parse_space({"injection.layer": "range(0,2)", "injection.tweak": "interval(0.01, 1)"}))
    with pytest.raises(ConfigError, match="searches the layer"):
        ladder_of(parse_space({"injection.tweak": "logrange(0.01, 1, 3)"}))
    assert main(sweep_args(tmp_path, "sweep=adaptive", "injection.tweak=interval(0.01,1)")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "logrange" in err
    assert not (tmp_path / "optuna.journal").exists()  # refused before any study


def _running(study, values: dict[int, float]):
    trial = study.ask()
    for step, value in values.items():
        trial.report(value, step)
    return study.trials[-1], trial


def test_the_halving_pruner_keeps_everyone_until_warm_then_the_top_third_at_checkpoints_only():
    pruner = HalvingPruner(first=4, eta=3, warmup=6)
    study = optuna.create_study(direction="maximize")
    assert pruner.checkpoint(4) and pruner.checkpoint(12) and not pruner.checkpoint(10)
    for v in (0.1, 0.2, 0.3, 0.4):
        study.add_trial(optuna.trial.create_trial(value=v, intermediate_values={4: v}))
    low, handle = _running(study, {4: 0.0})
    assert not pruner.prune(study, low)  # 5 at the checkpoint: still warming up
    study.add_trial(optuna.trial.create_trial(value=0.5, intermediate_values={4: 0.5}))
    assert pruner.prune(study, study.trials[low.number])  # 6: only the top 2 go on
    study.tell(handle, state=TrialState.PRUNED)
    assert not pruner.prune(study, _running(study, {4: 0.45})[0])  # second of 7: kept
    assert not pruner.prune(study, _running(study, {4: 0.0, 10: 0.0})[0])  # 10 prompts: no checkpoint


def _points(study):
    return [
        (t.number, canonical_params(t.params), t.state.name, t.user_attrs.get("meminject.round"))
        for t in study.trials
        if not t.user_attrs.get("meminject.surplus")
    ]


def _values(study):
    return [t.value if t.value is not None else t.intermediate_values[t.last_step] for t in study.trials]


def test_an_adaptive_study_records_phases_and_fidelity_and_a_resume_mid_round_ends_the_same(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = sweep_args(tmp_path, "sweep=adaptive", "study=ad", "progress=false", "data.limit=40", "prune_first=8")
    assert main(args) == 0
    study = load(tmp_path, "ad")
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    rounds = {t.user_attrs["meminject.round"] for t in done}
    assert {t.user_attrs["meminject.phase"] for t in done} >= {"coarse", "refine"} and max(rounds) >= 1
    assert rounds == set(range(max(rounds) + 1))  # every round in turn
    assert {t.user_attrs["n_prompts"] for t in done if t.state == TrialState.PRUNED} == {8, 24}  # the checkpoints
    assert {t.user_attrs["n_prompts"] for t in done if t.state == TrialState.COMPLETE} == {28}  # every train prompt
    keys = [canonical_params(t.params) for t in done]
    assert len(keys) == len(set(keys))  # no point twice
    runs = mlflow_runs(tmp_path, role="trial", study="ad")
    assert sorted(int(r.data.metrics["adaptive_round"]) for r in runs) == sorted(
        t.user_attrs["meminject.round"] for t in done
    )
    assert (tmp_path / "outputs" / "figures" / "ad" / "adaptive_phases.png").is_file()

    # the same study prepared, 7 trials run by a worker (mid coarse round), then resumed: the same trials
    again = [a for a in args if not a.startswith("study=")] + ["study=ad2"]
    assert main([*again, "workers=0"]) == 0
    url = str(tmp_path / "optuna.journal")
    assert main(["worker", "study=ad2", f"storage={url}", "max_trials=7", "progress=false"]) == 0
    assert load(tmp_path, "ad2").trials[7].state == TrialState.WAITING  # the round goes on after the stop
    assert main(again) == 0
    resumed = load(tmp_path, "ad2")
    assert _points(resumed) == _points(study)  # the same points, states and rounds, in the same order
    # and the same values to float32 tolerance (a fresh evaluator batches the prompts anew)
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(_values(resumed), _values(study)))


def test_best_marks_an_adaptive_tau_on_an_edge_only_where_growth_hit_its_bound():
    import pandas as pd

    from meminject.search._adaptive import searched_params
    from meminject.search._edges import tweak_edges

    spec = _spec()
    low, high = ladder_of(_space()).bounds
    table = pd.DataFrame({"injection.tweak": [1.0, 0.01, round(high, 6), round(low, 6), 0.1]})
    assert tweak_edges(table, searched_params(spec)) == ["", "", "high", "low", ""]
    assert tweak_edges(table, spec.params) == ["high", "low", "", "", ""]  # the ladder alone would say otherwise
