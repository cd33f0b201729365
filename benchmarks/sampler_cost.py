"""What TPE costs per suggestion as a study grows, and what it finds: Optuna's TPE against
meminject's bounded TPE (``BoundedTPESampler``, what ``sampler=tpe`` runs) on meminject's
journal storage (``IndexedJournalStorage``, what a journal sweep opens), in one run.

Run by hand (not a test), e.g.::

    python benchmarks/sampler_cost.py                       # 5,000 trials, 3 seeds
    python benchmarks/sampler_cost.py --trials 1000 --seeds 1

Each arm runs ``--trials`` ask/tell rounds on a journal file of its own (the default sweep
storage), the two arms one trial each in turn (so a load beside the benchmark slows both
alike), over the ``tpe`` preset's space (layer 0..29 × log-uniform τ 0.005..1 × three encodings), with a
synthetic objective instead of a model (a smooth optimum at layer 20, τ 0.2, ``unembed``,
plus noise), so the time is the sampler's and the storage's alone. It prints, per arm, the
median over seeds of the milliseconds per suggestion (ask and the three suggests) around
trial 100, 1,000 and the last, their ratio to trial 100's, and the quality of the best trial
by then: the noiseless value of the trial with the best observed value (the maximum is 0.3).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
from optuna.storages.journal import JournalFileBackend, JournalStorage  # noqa: E402

from meminject.search._samplers import BoundedTPESampler  # noqa: E402
from meminject.store._optuna import IndexedJournalStorage  # noqa: E402

WINDOW = 50  # suggestions averaged around each checkpoint


def objective(layer: int, tweak: float, encoding: str) -> float:
    """The noiseless objective: 0.3 at its optimum."""
    return -(((layer - 20) / 10) ** 2) - math.log(tweak / 0.2) ** 2 + 0.3 * (encoding == "unembed")


def _study(arm: str, seed: int, folder: Path) -> optuna.Study:
    cls = optuna.samplers.TPESampler if arm == "tpe" else BoundedTPESampler
    backend = JournalFileBackend(str(folder / f"{arm}-{seed}.journal"))
    # Optuna as it comes, against what a meminject journal sweep runs (sampler=tpe, its storage)
    storage = JournalStorage(backend) if arm == "tpe" else IndexedJournalStorage(backend)
    return optuna.create_study(storage=storage, direction="maximize", sampler=cls(seed=seed))


def run(seed: int, trials: int, folder: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Both arms, one trial of each in turn, so a load beside the benchmark slows both alike."""
    studies = {arm: _study(arm, seed, folder) for arm in ARMS}
    rngs = {arm: np.random.default_rng(seed) for arm in ARMS}
    out: dict[str, tuple[list[float], list[float]]] = {arm: ([], []) for arm in ARMS}
    observed = {arm: -math.inf for arm in ARMS}
    chosen = {arm: -math.inf for arm in ARMS}
    for _ in range(trials):
        for arm, study in studies.items():
            started = time.perf_counter()
            trial = study.ask()
            layer = trial.suggest_int("injection.layer", 0, 29)
            tweak = trial.suggest_float("injection.tweak", 0.005, 1.0, log=True)
            encoding = trial.suggest_categorical("memory.encoding", ["unembed", "embed", "layer"])
            out[arm][0].append(time.perf_counter() - started)
            truth = objective(layer, tweak, encoding)
            value = truth + rngs[arm].normal(0, 0.05)  # what the sampler sees
            study.tell(trial, value)
            if value > observed[arm]:  # the best trial so far by what was observed, scored by its noiseless value
                observed[arm], chosen[arm] = value, truth
            out[arm][1].append(chosen[arm])
    return out


ARMS = ("tpe", "bounded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    checkpoints = sorted({c for c in (100, 1000, args.trials) if c <= args.trials})
    print(f"{'arm':<12} " + " ".join(f"{'ms @' + str(c):>10} {'×':>5} {'best @' + str(c):>11}" for c in checkpoints))
    with tempfile.TemporaryDirectory() as folder:
        runs = [run(seed, args.trials, Path(folder)) for seed in range(args.seeds)]
    for arm in ARMS:
        results = [r[arm] for r in runs]
        cells = []
        base = None
        for c in checkpoints:
            ms = statistics.median(float(np.mean(t[c - WINDOW : c])) * 1e3 for t, _ in results)
            base = base or ms
            found = statistics.median(b[c - 1] for _, b in results)
            cells.append(f"{ms:>10.2f} {ms / base:>5.2f} {found:>11.4f}")
        print(f"{arm:<12} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
