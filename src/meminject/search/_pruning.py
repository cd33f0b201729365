"""Stopping hopeless trials early: a paired test against the k-th best trial, prompt by prompt.

A trial evaluates its prompts in seeded chunks (``prune_chunks``). After each chunk it stores
its per-prompt values (one storage write per chunk, as a user attribute) and reports the running
mean to Optuna; :class:`PairedPruner` then compares it, prompt by prompt, with the
``prune_keep``-th best complete trial on the same prompts and prunes when it is significantly worse.

Two tests (``pruner=``), and successive halving (``pruner=halving``, :class:`HalvingPruner`):

* ``mean`` (the default when pruning): a one-sided paired t-test of the mean difference, with
  the finite-population correction. The objective is the mean over exactly these N prompts and
  the seen ones are a simple random sample of them, so the uncertainty shrinks to 0 as the
  sample grows to N. It tests the quantity the study ranks by.
* ``wilcoxon``: the signed-rank test of Optuna's ``WilcoxonPruner``. It tests where the typical
  difference lies, not the mean: a site whose mean gain comes from a few prompts (and which
  loses a little on most) is "significantly worse" to it. On 2WikiMultiHop that is the best
  sites' shape (the top site's gain comes from 5 of 140 prompts), and in a replay of the
  exhaustive grid it pruned 2-5 of the top 5 sites (benchmarks/time_to_best.py).

Why not ``optuna.pruners.WilcoxonPruner`` itself: it reads one intermediate value per prompt,
i.e. one storage write per prompt and trial. Measured here (Optuna 5.0): 0.47 ms per report on a
journal file, 4.5 ms on SQLite, so 0.05-0.5 s per 106-prompt trial against a 0.6-2.3 s trial.
This pruner decides from one write per chunk, through Optuna's public ``BasePruner`` interface.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ..tracking._schema import ATTR_PROMPT_VALUES

__all__ = [
    "PRUNERS",
    "ATTR_PROMPT_VALUES",
    "PairedPruner",
    "make_pruner",
    "prompt_values",
    "paired_mean_p",
    "paired_wilcoxon_p",
    "PER_PROMPT_COLUMN",
    "HALVING_ETA",
    "HalvingPruner",
]

PRUNERS = ("none", "mean", "wilcoxon", "halving")
HALVING_ETA = 3  # pruner=halving: checkpoints 3× apart, the top third kept at each
# The per-prompt quantity whose mean (or median, or share > 0) is each objective.
PER_PROMPT_COLUMN = {
    "mean_gain": "gain",
    "median_gain": "gain",
    "frac_improved": "gain",
    "mean_logprob_gain": "logprob_gain",
    "specific_gain": "specific_gain",  # gain − gain with another prompt's memory (metric.specific)
}


def prompt_values(trial: FrozenTrial) -> dict[str, float]:
    text = trial.user_attrs.get(ATTR_PROMPT_VALUES)
    return json.loads(text) if text else {}


def paired_wilcoxon_p(differences: np.ndarray, population: int | None = None) -> float:  # noqa: ARG001 - same signature as paired_mean_p
    """One-sided p-value that the differences (current − best, in the better direction) are
    centred below 0: scipy's Wilcoxon signed-rank test; 1.0 when every difference is 0."""
    from scipy.stats import wilcoxon

    nonzero = differences[differences != 0]
    if len(nonzero) == 0:
        return 1.0
    return float(wilcoxon(nonzero, alternative="less").pvalue)


def paired_mean_p(differences: np.ndarray, population: int) -> float:
    """One-sided p-value that the mean difference over all ``population`` prompts is below 0,
    from the differences on a simple random sample of them (drawn without replacement):
    Student's t with the finite-population correction √(1 − n/N)."""
    from scipy.stats import t as student

    n = len(differences)
    if n < 2:
        return 1.0
    mean = float(differences.mean())
    se = float(differences.std(ddof=1)) / np.sqrt(n) * np.sqrt(max(0.0, 1.0 - n / max(population, n)))
    if se == 0.0:
        return 0.0 if mean < 0 else 1.0
    return float(student.cdf(mean / se, n - 1))


_TESTS = {"mean": paired_mean_p, "wilcoxon": paired_wilcoxon_p}


class PairedPruner(optuna.pruners.BasePruner):
    """Prune a trial whose per-prompt values are significantly worse than the ``keep``-th best
    complete trial's, on the same prompts (``test``: ``mean`` or ``wilcoxon``, see the module).

    Against the best trial alone (as ``WilcoxonPruner`` does), a paired test prunes the
    runner-up sites too: they are consistently, if slightly, worse. Against the ``keep``-th
    best, a trial that could still enter the top ``keep`` is never pruned, so the ranked table's
    top sites all complete. No pruning before ``keep`` trials are complete.

    ``p_threshold``: prune when the one-sided p-value is below it. ``min_prompts``: never
    decide on fewer paired prompts. ``margin``: never prune a trial whose mean over the seen
    prompts is within this fraction of the reference's mean there (|reference mean| × margin)
    or above it: neighbouring sites (τ ± 1 at one layer) differ by little, and a few prompts
    are not enough to order them (nor a site whose gain comes from a few prompts).
    """

    # Defaults: in replays of the exhaustive unembed grid on SmolLM2 (handwritten, and the first
    # 200 2WikiMultiHop prompts; 8 seeds each, benchmarks/pruning_replay.py) these kept the top-1
    # and all top-5 sites in all 16 replays at ~50% of the grid's compute; p < 0.05 (margin 0.2,
    # 8 prompts) spent ~33% but lost every top-5 site in 3 of the 16.
    def __init__(
        self, test: str = "mean", p_threshold: float = 0.01, keep: int = 5, min_prompts: int = 16, margin: float = 0.5
    ) -> None:
        self.test = _TESTS[test]
        self.p_threshold = float(p_threshold)
        self.keep = int(keep)
        self.min_prompts = int(min_prompts)
        self.margin = float(margin)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        seen = prompt_values(trial)
        if len(seen) < self.min_prompts:
            return False
        reference_trial = _kth_best(study, self.keep)
        if reference_trial is None:
            return False
        reference = prompt_values(reference_trial)
        common = [row for row in seen if row in reference]
        if len(common) < self.min_prompts:
            return False
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        ours, theirs = np.array([seen[r] for r in common]), np.array([reference[r] for r in common])
        return self.worse(sign * ours, sign * theirs, len(reference))

    def worse(self, ours: np.ndarray, theirs: np.ndarray, population: int) -> bool:
        """The decision on paired values of the same prompts, larger is better (``population``:
        how many prompts the objective averages over). benchmarks/pruning_replay.py replays it."""
        differences = ours - theirs
        if differences.mean() >= -self.margin * abs(theirs.mean()):
            return False
        return self.test(differences, population) < self.p_threshold


class HalvingPruner(optuna.pruners.BasePruner):
    """Successive halving over prompts, asynchronous: a trial's running mean at each checkpoint
    (``first``, ``first·eta``, ... prompts seen, in one seeded order for every trial) must be in
    the top 1/eta of the values other trials had at that checkpoint, or it stops there.

    Why not ``optuna.pruners.SuccessiveHalvingPruner``: before a checkpoint has seen eta trials
    it keeps only a trial better than every one before it, so the order of a grid decides which
    cells survive (on the tiny model, 14 of the 15 coarse cells of ``sweep=adaptive`` stopped
    at the first checkpoint). This one keeps every trial until ``warmup`` trials have reached a
    checkpoint, then the top 1/eta, and decides only at the checkpoints themselves (a trial's
    last report, all prompts seen, completes it). It reads the trials' public intermediate values.
    """

    def __init__(self, first: int, eta: int = HALVING_ETA, warmup: int | None = None) -> None:
        self.first, self.eta = int(first), int(eta)
        self.warmup = int(warmup) if warmup is not None else self.eta**2

    def checkpoint(self, step: int) -> bool:
        """Whether ``step`` prompts seen is one of the checkpoints (first·eta^k)."""
        rung = self.first
        while rung < step:
            rung *= self.eta
        return rung == step

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not self.checkpoint(step):
            return False
        reached = [
            t.intermediate_values[step]
            for t in study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            )
            if step in t.intermediate_values and t.number != trial.number
        ]
        if len(reached) + 1 < self.warmup:
            return False
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        value = sign * trial.intermediate_values[step]
        better = sum(sign * v > value for v in reached)
        return better >= max(1, (len(reached) + 1) // self.eta)


def _kth_best(study: optuna.Study, k: int) -> FrozenTrial | None:
    """The k-th best complete trial that stored its per-prompt values (None before there are k)."""
    trials = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if ATTR_PROMPT_VALUES in t.user_attrs
    ]
    if len(trials) < k:
        return None
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(trials, key=lambda t: t.value, reverse=maximize)[k - 1]


def make_pruner(spec: Any) -> optuna.pruners.BasePruner:
    """The study's pruner from its :class:`~meminject.search._settings.SweepSpec`."""
    if spec.pruner in _TESTS:
        return PairedPruner(test=spec.pruner, p_threshold=spec.prune_p, keep=spec.prune_keep)
    if spec.pruner == "halving":
        return HalvingPruner(first=spec.prune_first, eta=HALVING_ETA)
    return optuna.pruners.NopPruner()


def per_prompt_values(objective: str, values: dict[str, np.ndarray]) -> np.ndarray:
    """Each prompt's share of the objective: its gain (log-prob gain), or whether it improved."""
    column = values[PER_PROMPT_COLUMN[objective]]
    return (column > 0).astype(float) if objective == "frac_improved" else np.asarray(column, dtype=float)


def monitor_for(trial: optuna.Trial, objective: str) -> Any:
    """The evaluator's monitor of one trial: after each chunk, store the per-prompt values seen
    so far (one write), report their mean at step = prompts seen, and ask the pruner."""
    seen: dict[str, float] = {}

    def watch(rows: np.ndarray, values: dict[str, np.ndarray]) -> bool:
        seen.update({str(int(r)): float(v) for r, v in zip(rows, per_prompt_values(objective, values))})
        trial.set_user_attr(ATTR_PROMPT_VALUES, json.dumps(seen))
        trial.report(float(np.mean(list(seen.values()))), step=len(seen))
        return trial.should_prune()

    return watch


def complete_values(objective: str, per_prompt: Any) -> str:
    """A complete trial's per-prompt values, as stored for later trials to be compared with."""
    columns = {c: per_prompt[c].to_numpy() for c in set(PER_PROMPT_COLUMN.values()) if c in per_prompt}
    values = per_prompt_values(objective, columns)
    return json.dumps({str(int(r)): float(v) for r, v in zip(per_prompt["row"], values)})
