"""Pruned trials: chunked evaluation equals unchunked, the pruner's test, the PRUNED state in
Optuna and MLflow, completed values untouched, pruned grid points never re-run."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

from conftest import compose, load, make_evaluator, mlflow_runs, run_cli, sweep_args
from meminject.engine._evaluation import InjectionSpec
from meminject.search._pruning import ATTR_PROMPT_VALUES, PairedPruner, paired_mean_p, paired_wilcoxon_p, prompt_values

POINTS = [
    (InjectionSpec(layer=1, tweak=4.0), "correct"),
    (InjectionSpec(layer=0, tweak=9.0, positions="last"), "correct"),
    (InjectionSpec(layer=2, tweak=2.0, encoding="embed"), "random_vector"),
]


@pytest.mark.parametrize("metric", ["first_token", "sequence"])
@pytest.mark.parametrize("cache_mb", [2048, 0])
def test_chunked_evaluation_equals_unchunked_per_prompt(tiny, demo, metric, cache_mb):
    plain = make_evaluator(tiny, demo, answer_metric=metric, prefix_cache_bytes=cache_mb * 2**20)
    chunked = make_evaluator(
        tiny, demo, answer_metric=metric, prefix_cache_bytes=cache_mb * 2**20, chunks=4, chunk_seed=3
    )
    assert len(chunked.chunk_index) == 4 and sorted(np.concatenate(chunked.chunk_index)) == list(range(len(demo)))
    assert not all(
        (part == np.sort(part)).all() and part[-1] - part[0] == len(part) - 1 for part in chunked.chunk_index
    ), "chunks are shuffled samples"
    for spec, kind in POINTS:
        memory = compose("model=tiny", f"memory.type={kind}").memory
        a, b = plain.evaluate(spec, memory), chunked.evaluate(spec, memory)
        # probabilities of 1e-13 to 1e-4 (the sequence metric's are products): relatively, and a
        # gain (their difference, as small as they are) to 1e-4 of the larger one
        for column in ("answer_prob_before", "answer_prob_after"):
            np.testing.assert_allclose(b.per_prompt[column], a.per_prompt[column], rtol=1e-4, atol=0, err_msg=column)
        scale = np.maximum(a.per_prompt["answer_prob_before"], a.per_prompt["answer_prob_after"]).to_numpy()
        assert (np.abs(b.per_prompt["gain"] - a.per_prompt["gain"]).to_numpy() <= 1e-4 * scale).all(), "gain"
        # log-probabilities are float32 logits of other batch shapes: equal to float32 rounding,
        # a few ulps of the log-probabilities themselves (3.8e-6 each for a value in [-32, -16];
        # the sequence metric sums several, before and after)
        ulp = float(
            np.spacing(
                np.float32(np.abs(a.per_prompt[["answer_logprob_before", "answer_logprob_after"]].to_numpy()).max())
            )
        )
        np.testing.assert_allclose(b.per_prompt["logprob_gain"], a.per_prompt["logprob_gain"], rtol=0, atol=4 * ulp)
        # ranks: equal near the top; deep in the random tiny model's 49k near-tied logits two of
        # them within float32 rounding may swap under another batch shape (rank 31889 vs 31890)
        ranks_a, ranks_b = a.per_prompt["rank_after"].to_numpy(), b.per_prompt["rank_after"].to_numpy()
        assert (ranks_b[ranks_a < 1000] == ranks_a[ranks_a < 1000]).all() and (np.abs(ranks_b - ranks_a) <= 1).all()
        assert not b.pruned and b.n_prompts == len(demo)


def test_a_monitor_stops_a_trial_after_a_chunk_and_sees_each_prompt_once(tiny, demo):
    evaluator = make_evaluator(tiny, demo, chunks=4, trials_per_forward=2)
    memory = compose("model=tiny").memory
    seen: list[np.ndarray] = []

    def stop_after_two(rows, values):
        seen.append(rows)
        np.testing.assert_allclose(
            values["gain"], full.per_prompt.set_index("row").loc[rows, "gain"], rtol=1e-6, atol=1e-12
        )
        return len(seen) == 2

    full = make_evaluator(tiny, demo).evaluate(InjectionSpec(layer=1, tweak=5.0), memory)
    other = InjectionSpec(layer=1, tweak=2.0)
    pruned, kept = evaluator.evaluate_many(
        [(InjectionSpec(layer=1, tweak=5.0), memory), (other, memory)], [stop_after_two, None]
    )
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


def _mean_p(differences: np.ndarray, population: int) -> float:
    """The paired t-test written out: t = mean / (sd/√n · √(1 − n/N)), one-sided, n − 1 dof."""
    from scipy.stats import t

    n = len(differences)
    se = differences.std(ddof=1) / np.sqrt(n) * np.sqrt(1 - n / population)
    return t.cdf(differences.mean() / se, n - 1)


@pytest.mark.parametrize("test", ["mean", "wilcoxon"])
def test_the_pruner_is_a_one_sided_paired_test_against_the_kth_best_trial(test):
    from scipy.stats import wilcoxon

    def p_value(differences):
        return _mean_p(differences, 30) if test == "mean" else wilcoxon(differences, alternative="less").pvalue

    rng = np.random.default_rng(0)
    best_values = {str(r): float(v) for r, v in enumerate(rng.normal(0.05, 0.02, 30))}
    best = _frozen(best_values)
    assert (PairedPruner().p_threshold, PairedPruner().margin, PairedPruner().min_prompts) == (
        0.01,
        0.5,
        16,
    )  # the defaults the README states
    pruner = PairedPruner(test=test, p_threshold=0.05, keep=1, min_prompts=8, margin=0.2)
    for shift, expected in [(-0.03, True), (-0.001, None), (0.01, False)]:
        seen = {r: best_values[r] + shift + float(rng.normal(0, 0.01)) for r in list(best_values)[:12]}
        current = _frozen(seen, TrialState.RUNNING)
        differences = np.array([seen[r] - best_values[r] for r in seen])
        margin = 0.2 * abs(np.mean([best_values[r] for r in seen]))  # within 20% of the reference's mean: never pruned
        direct = differences.mean() < -margin and p_value(differences) < 0.05
        assert pruner.prune(_Study(best), current) == direct
        if expected is not None:
            assert direct == expected
        flipped = PairedPruner(test=test, p_threshold=0.05, keep=1, min_prompts=8, margin=0.2).prune(
            _Study(best, direction="minimize"), current
        )
        assert flipped == (differences.mean() > margin and p_value(-differences) < 0.05)
    # keep=2: the reference is the second-best trial, and no pruning before there are two
    clearly_worse = _frozen({r: best_values[r] - 0.05 for r in list(best_values)[:12]}, TrialState.RUNNING)
    assert not PairedPruner(test=test, keep=2, min_prompts=8).prune(_Study(best), clearly_worse)
    runner_up = _frozen({r: v - 0.049 for r, v in best_values.items()})
    nearly = _frozen(
        {r: best_values[r] - 0.048 + float(rng.normal(0, 1e-4)) for r in list(best_values)[:12]}, TrialState.RUNNING
    )
    assert not PairedPruner(test=test, keep=2, min_prompts=8).prune(_Study(best, runner_up), nearly)
    assert PairedPruner(test=test, keep=1, min_prompts=8).prune(_Study(best, runner_up), nearly)
    assert not PairedPruner(test=test, keep=1).prune(_Study(best, runner_up), nearly), (
        "12 prompts: fewer than the default 16"
    )
    neighbour = _frozen(
        {r: best_values[r] * 0.9 for r in list(best_values)[:12]}, TrialState.RUNNING
    )  # 10% worse on every prompt
    assert not pruner.prune(_Study(best), neighbour), "a consistently but slightly worse neighbour is kept (margin)"
    assert PairedPruner(test=test, p_threshold=0.05, keep=1, margin=0.0, min_prompts=8).prune(_Study(best), neighbour)
    few = _frozen({"0": -1.0, "1": -1.0}, TrialState.RUNNING)
    assert not pruner.prune(_Study(best), few), "never on fewer than min_prompts prompts"


def test_the_mean_test_is_a_t_test_that_becomes_certain_as_the_sample_becomes_the_population():
    from scipy.stats import ttest_1samp

    rng = np.random.default_rng(1)
    differences = rng.normal(-0.01, 0.05, 20)
    # without the correction it is scipy's one-sample t-test
    assert paired_mean_p(differences, 10**12) == pytest.approx(
        ttest_1samp(differences, 0.0, alternative="less").pvalue, rel=1e-9
    )
    assert paired_mean_p(differences, 40) == pytest.approx(_mean_p(differences, 40), rel=1e-12)
    assert paired_mean_p(differences, 40) < paired_mean_p(differences, 400) < paired_mean_p(differences, 10**12)
    assert paired_mean_p(differences, len(differences)) == 0.0, "every prompt seen: a mean below 0 is certain"
    assert paired_mean_p(-differences, len(differences)) == 1.0
    assert paired_wilcoxon_p(np.zeros(10)) == 1.0 and paired_mean_p(np.zeros(10), 20) == 1.0


def test_a_mean_carried_by_few_prompts_is_kept_by_the_mean_test_and_pruned_by_wilcoxon():
    """The best 2WikiMultiHop sites' shape: a little worse on most prompts, much better on a few."""
    reference = {str(r): 0.002 for r in range(40)}  # a small, steady gain everywhere
    values = {str(r): -0.004 for r in range(40)}
    for r in (0, 25, 30, 35, 39):  # 5 of 40 prompts gain a lot: its mean (+0.0065) is above the reference's
        values[str(r)] = 0.08
    seen = _frozen({r: values[r] for r in list(values)[:20]}, TrialState.RUNNING)  # half seen, one big gain among them
    study = _Study(_frozen(reference))
    assert np.mean(list(values.values())) > 0.002 > np.mean(list(prompt_values(seen).values()))
    assert PairedPruner(test="wilcoxon", keep=1, p_threshold=0.05, margin=0.2).prune(study, seen)
    assert not PairedPruner(test="mean", keep=1, p_threshold=0.05, margin=0.2).prune(study, seen)


def _sweep(tmp_path, *extra):
    args = sweep_args(
        tmp_path,
        "sweep=paper_grid",
        "injection.layer=range(0, all)",
        "memory.encoding=choice(unembed)",
        "data.limit=40",
        *extra,
    )
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_pruned_trials_are_pruned_in_optuna_and_mlflow_and_never_change_a_completed_value_or_rerun(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "pruned").mkdir()
    _sweep(tmp_path / "full", "study=g")
    out = _sweep(tmp_path / "pruned", "study=g", "pruner=mean", "prune_p=0.2").stdout
    full, pruned = load(tmp_path / "full", "g"), load(tmp_path / "pruned", "g")
    states = [t.state for t in pruned.trials]
    assert states.count(TrialState.PRUNED) >= 3 and TrialState.FAIL not in states, states
    assert " pruned (" in out
    by_point = {tuple(sorted(t.params.items())): t for t in full.trials}
    for t in pruned.trials:
        twin = by_point[tuple(sorted(t.params.items()))]
        if t.state == TrialState.COMPLETE:  # pruning never changes a completed trial's value
            np.testing.assert_allclose(
                t.value, twin.value, rtol=1e-6, atol=1e-8
            )  # chunks batch prompts differently: float32 rounding
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
    from meminject.selection._results import ranked_sites

    ranked = set(ranked_sites(pruned)["best_trial"])
    assert ranked <= {t.number for t in pruned.trials if t.state == TrialState.COMPLETE}
    rerun = _sweep(tmp_path / "pruned", "study=g", "pruner=mean", "prune_p=0.2").stdout
    assert "is complete" in rerun and len(load(tmp_path / "pruned", "g").trials) == len(pruned.trials) == 3 * 15


def test_a_pruned_grid_runs_layer_by_layer_in_seeded_random_order():
    from meminject.search._study import pruned_grid_order

    points = [
        {"injection.layer": layer, "injection.tweak": tau, "memory.encoding": enc}
        for layer in range(6)
        for tau in range(1, 5)
        for enc in ("unembed", "embed")
    ]
    ordered = pruned_grid_order([dict(p) for p in points], seed=0)
    assert sorted(map(repr, ordered)) == sorted(map(repr, points)), "a permutation of the grid"
    layers = [p["injection.layer"] for p in ordered]
    runs = [layer for i, layer in enumerate(layers) if i == 0 or layer != layers[i - 1]]
    assert len(runs) == 6 and runs != sorted(runs), "each layer's points together (they stack), layers shuffled"
    assert ordered[:8] != [p for p in points if p["injection.layer"] == runs[0]], "a layer's points shuffled too"
    assert (
        pruned_grid_order([dict(p) for p in points], seed=0)
        == ordered
        != pruned_grid_order([dict(p) for p in points], seed=1)
    )


def test_auto_stacking_is_on_for_chunked_grid_trials_on_a_cpu_only(tiny, demo):
    from meminject.engine._evaluation import Evaluator

    cfg = compose("model=tiny", "model.device=cpu")
    assert cfg.perf.trials_per_forward == "auto"
    assert Evaluator.from_config(tiny, demo, cfg).trials_per_forward == 1
    assert Evaluator.from_config(tiny, demo, cfg, chunks=8).trials_per_forward == 1  # TPE: one trial per ask
    assert Evaluator.from_config(tiny, demo, cfg, chunks=8, stack_chunks=True).trials_per_forward == 8
    two = compose("model=tiny", "model.device=cpu", "perf.trials_per_forward=2")
    assert (
        Evaluator.from_config(tiny, demo, two, chunks=8, stack_chunks=True).trials_per_forward == 2
    )  # a number is kept
    # a lone trial's chunks are cut by the forward-cost model; stacked and unchunked ones keep the padding rule
    assert Evaluator.from_config(tiny, demo, cfg, chunks=8).floor_tokens > 0
    assert (
        Evaluator.from_config(tiny, demo, cfg).floor_tokens
        == 0
        == Evaluator.from_config(tiny, demo, cfg, chunks=8, stack_chunks=True).floor_tokens
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 60), min_size=1, max_size=9), st.sampled_from([64, 256, 2048]), st.sampled_from([32, 256])
)
def test_cost_based_batches_are_the_cheapest_contiguous_cut(lengths, max_tokens, floor):
    """The dynamic programme against every way of cutting the length-sorted prompts."""
    import itertools

    from meminject.engine._runner import _cheapest_groups

    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ordered = [lengths[i] for i in order]

    def cost(groups):
        return sum(floor / 4 + max(len(g) * max(lengths[i] for i in g), floor) for g in groups)

    def allowed(groups):
        return all(len(g) == 1 or len(g) * max(lengths[i] for i in g) <= max_tokens for g in groups)

    groups = _cheapest_groups(order, ordered, max_tokens, floor)
    assert [i for g in groups for i in g] == order and allowed(groups)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(order) - 1):
        bounds = [0] + [k + 1 for k, cut in enumerate(cuts) if cut] + [len(order)]
        candidate = [order[a:b] for a, b in zip(bounds, bounds[1:])]
        if allowed(candidate):
            best = min(best, cost(candidate))
    assert cost(groups) == pytest.approx(best)
