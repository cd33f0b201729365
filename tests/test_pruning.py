"""Pruned trials: chunked evaluation equals unchunked, the pruner's test, the PRUNED state in
Optuna and MLflow, completed values untouched, pruned grid points never re-run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from conftest import compose, env, load, make_evaluator, mlflow_runs, sweep_args
from meminject.evaluation import InjectionSpec
from meminject.sweep._pruning import ATTR_PROMPT_VALUES, PairedWilcoxonPruner, paired_wilcoxon_p, prompt_values

POINTS = [
    (InjectionSpec(layer=1, tweak=4.0), "correct"),
    (InjectionSpec(layer=0, tweak=9.0, positions="last"), "correct"),
    (InjectionSpec(layer=2, tweak=2.0, encoding="embed"), "random_vector"),
]


@pytest.mark.parametrize("metric", ["first_token", "sequence"])
@pytest.mark.parametrize("cache_mb", [2048, 0])
def test_chunked_evaluation_equals_unchunked_per_prompt(tiny, demo, metric, cache_mb):
    plain = make_evaluator(tiny, demo, answer_metric=metric, prefix_cache_bytes=cache_mb * 2**20)
    chunked = make_evaluator(tiny, demo, answer_metric=metric, prefix_cache_bytes=cache_mb * 2**20, chunks=4, chunk_seed=3)
    assert len(chunked.chunk_index) == 4 and sorted(np.concatenate(chunked.chunk_index)) == list(range(len(demo)))
    assert not all((part == np.sort(part)).all() and part[-1] - part[0] == len(part) - 1 for part in chunked.chunk_index), "chunks are shuffled samples"
    for spec, kind in POINTS:
        memory = compose("model=tiny", f"memory.type={kind}").memory
        a, b = plain.evaluate(spec, memory), chunked.evaluate(spec, memory)
        for column in ("answer_prob_before", "answer_prob_after", "gain"):
            np.testing.assert_allclose(b.per_prompt[column], a.per_prompt[column], rtol=0, atol=1e-6, err_msg=column)
        # log-probabilities are float32 logits of other batch shapes: equal to float32 rounding (~2e-6 relative)
        np.testing.assert_allclose(b.per_prompt["logprob_gain"], a.per_prompt["logprob_gain"], rtol=1e-5, atol=1e-6)
        assert (b.per_prompt["rank_after"] == a.per_prompt["rank_after"]).all() and not b.pruned and b.n_prompts == len(demo)


def test_a_monitor_stops_a_trial_after_a_chunk_and_sees_each_prompt_once(tiny, demo):
    evaluator = make_evaluator(tiny, demo, chunks=4, trials_per_forward=2)
    memory = compose("model=tiny").memory
    seen: list[np.ndarray] = []

    def stop_after_two(rows, values):
        seen.append(rows)
        np.testing.assert_allclose(values["gain"], full.per_prompt.set_index("row").loc[rows, "gain"], rtol=1e-6, atol=1e-12)
        return len(seen) == 2

    full = make_evaluator(tiny, demo).evaluate(InjectionSpec(layer=1, tweak=5.0), memory)
    other = InjectionSpec(layer=1, tweak=2.0)
    pruned, kept = evaluator.evaluate_many([(InjectionSpec(layer=1, tweak=5.0), memory), (other, memory)], [stop_after_two, None])
    assert pruned.pruned and pruned.n_prompts == sum(len(r) for r in seen) == len(pruned.per_prompt)
    assert sorted(pruned.per_prompt["row"]) == sorted(np.concatenate(seen).tolist())
    np.testing.assert_allclose(pruned.summary["mean_gain"], np.mean(pruned.per_prompt["gain"]))
    assert not kept.pruned and kept.n_prompts == len(demo)  # its stack partner went on alone
    again = evaluator.evaluate(InjectionSpec(layer=1, tweak=5.0), memory)
    assert not again.pruned, "a pruned result is never served from the cache"


class _Study:
    def __init__(self, *complete, direction="maximize"):
        self.complete, self.direction = list(complete), optuna.study.StudyDirection[direction.upper()]

    def get_trials(self, deepcopy=False, states=()):
        return [t for t in self.complete if t.state in states]


def _frozen(values: dict[str, float], state=TrialState.COMPLETE):
    value = float(np.mean(list(values.values()))) if state == TrialState.COMPLETE else None
    return optuna.trial.create_trial(state=state, value=value, user_attrs={ATTR_PROMPT_VALUES: json.dumps(values)})


def test_the_pruner_is_a_one_sided_paired_wilcoxon_test_against_the_best_trial():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    best_values = {str(r): float(v) for r, v in enumerate(rng.normal(0.05, 0.02, 30))}
    best = _frozen(best_values)
    pruner = PairedWilcoxonPruner(p_threshold=0.1, keep=1)
    for shift, expected in [(-0.03, True), (-0.001, None), (0.01, False)]:
        seen = {r: best_values[r] + shift + float(rng.normal(0, 0.01)) for r in list(best_values)[:12]}
        current = _frozen(seen, TrialState.RUNNING)
        differences = np.array([seen[r] - best_values[r] for r in seen])
        margin = 0.1 * abs(np.mean([best_values[r] for r in seen]))  # within 10% of the reference's mean: never pruned
        direct = differences.mean() < -margin and wilcoxon(differences, alternative="less").pvalue < 0.1
        assert pruner.prune(_Study(best), current) == direct
        if expected is not None:
            assert direct == expected
        flipped = PairedWilcoxonPruner(p_threshold=0.1, keep=1).prune(_Study(best, direction="minimize"), current)
        assert flipped == (differences.mean() > margin and wilcoxon(-differences, alternative="less").pvalue < 0.1)
    # keep=2: the reference is the second-best trial, and no pruning before there are two
    clearly_worse = _frozen({r: best_values[r] - 0.05 for r in list(best_values)[:12]}, TrialState.RUNNING)
    assert not PairedWilcoxonPruner(keep=2).prune(_Study(best), clearly_worse)
    runner_up = _frozen({r: v - 0.049 for r, v in best_values.items()})
    assert not PairedWilcoxonPruner(keep=2).prune(_Study(best, runner_up), _frozen({r: best_values[r] - 0.048 for r in list(best_values)[:12]}, TrialState.RUNNING))
    assert PairedWilcoxonPruner(keep=1).prune(_Study(best, runner_up), _frozen({r: best_values[r] - 0.048 for r in list(best_values)[:12]}, TrialState.RUNNING))
    neighbour = _frozen({r: best_values[r] * 0.95 for r in list(best_values)[:12]}, TrialState.RUNNING)  # 5% worse on every prompt
    assert not pruner.prune(_Study(best), neighbour), "a consistently but slightly worse neighbour is kept (margin)"
    assert PairedWilcoxonPruner(p_threshold=0.1, keep=1, margin=0.0).prune(_Study(best), neighbour)
    assert paired_wilcoxon_p(np.zeros(10)) == 1.0
    few = _frozen({"0": -1.0, "1": -1.0}, TrialState.RUNNING)
    assert not pruner.prune(_Study(best), few), "never on fewer than min_prompts prompts"


def _sweep(tmp_path, *extra):
    args = sweep_args(tmp_path, "sweep=paper_grid", "injection.layer=range(0, all)", "memory.encoding=choice(unembed)", "data.limit=40", *extra)
    proc = subprocess.run([sys.executable, "-m", "meminject", *args], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_pruned_trials_are_pruned_in_optuna_and_mlflow_and_never_change_a_completed_value_or_rerun(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "pruned").mkdir()
    _sweep(tmp_path / "full", "study=g")
    out = _sweep(tmp_path / "pruned", "study=g", "pruner=wilcoxon", "prune_p=0.2").stdout
    full, pruned = load(tmp_path / "full", "g"), load(tmp_path / "pruned", "g")
    states = [t.state for t in pruned.trials]
    assert states.count(TrialState.PRUNED) >= 3 and TrialState.FAIL not in states, states
    assert " pruned (" in out
    by_point = {tuple(sorted(t.params.items())): t for t in full.trials}
    for t in pruned.trials:
        twin = by_point[tuple(sorted(t.params.items()))]
        if t.state == TrialState.COMPLETE:  # pruning never changes a completed trial's value
            np.testing.assert_allclose(t.value, twin.value, rtol=1e-6, atol=1e-8)  # chunks batch prompts differently: float32 rounding
            assert t.user_attrs["n_prompts"] == twin.user_attrs["n_prompts"]
        else:  # partial metrics over the prompts it saw, no full-trial value
            assert t.user_attrs["n_prompts"] < twin.user_attrs["n_prompts"] and "mean_gain" not in t.user_attrs
            assert len(prompt_values(pruned.trials[t.number])) == t.user_attrs["n_prompts"]
            assert np.isclose(t.user_attrs["partial_mean_gain"], np.mean(list(prompt_values(t).values())))
    runs = {int(r.data.tags["meminject.trial_number"]): r for r in mlflow_runs(tmp_path / "pruned", "trial")}
    for t in pruned.trials:
        run = runs[t.number]
        assert run.info.status == "FINISHED"
        if t.state == TrialState.PRUNED:
            assert run.data.tags.get("meminject.state") == "PRUNED"
            assert "partial_mean_gain" in run.data.metrics and "mean_gain" not in run.data.metrics
            assert run.data.metrics["n_prompts"] == t.user_attrs["n_prompts"]
        else:
            assert "mean_gain" in run.data.metrics and run.data.tags.get("meminject.state") != "PRUNED"
    # best ranks only completed trials; a rerun finds the study complete: no pruned point re-runs
    from meminject.sweep import ranked_sites

    ranked = set(ranked_sites(pruned)["best_trial"])
    assert ranked <= {t.number for t in pruned.trials if t.state == TrialState.COMPLETE}
    rerun = _sweep(tmp_path / "pruned", "study=g", "pruner=wilcoxon", "prune_p=0.2").stdout
    assert "is complete" in rerun and len(load(tmp_path / "pruned", "g").trials) == len(pruned.trials) == 3 * 15
