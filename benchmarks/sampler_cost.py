"""What TPE costs per suggestion as a study grows, and what it finds: Optuna's TPE against
meminject's bounded TPE (``BoundedTPESampler``, what ``sampler=tpe`` runs), in one run.

Run by hand (not a test), e.g.::

    python benchmarks/sampler_cost.py                       # 5,000 trials, 3 seeds
    python benchmarks/sampler_cost.py --trials 1000 --seeds 1

Each arm runs ``--trials`` ask/tell rounds on a journal file (the default sweep storage) over
the ``tpe`` preset's space (layer 0..29 × log-uniform τ 0.005..1 × three encodings), with a
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

from meminject.sweep._optuna import BoundedTPESampler  # noqa: E402

WINDOW = 50  # suggestions averaged around each checkpoint


def objective(layer: int, tweak: float, encoding: str) -> float:
    """The noiseless objective: 0.3 at its optimum."""
    return -(((layer - 20) / 10) ** 2) - math.log(tweak / 0.2) ** 2 + 0.3 * (encoding == "unembed")


def run(arm: str, seed: int, trials: int, folder: Path) -> tuple[list[float], list[float]]:
    cls = optuna.samplers.TPESampler if arm == "tpe" else BoundedTPESampler
    storage = JournalStorage(JournalFileBackend(str(folder / f"{arm}-{seed}.journal")))
    study = optuna.create_study(storage=storage, direction="maximize", sampler=cls(seed=seed))
    rng = np.random.default_rng(seed)
    times, best, observed = [], [], -math.inf
    for _ in range(trials):
        started = time.perf_counter()
        trial = study.ask()
        layer = trial.suggest_int("injection.layer", 0, 29)
        tweak = trial.suggest_float("injection.tweak", 0.005, 1.0, log=True)
        encoding = trial.suggest_categorical("memory.encoding", ["unembed", "embed", "layer"])
        times.append(time.perf_counter() - started)
        truth = objective(layer, tweak, encoding)
        value = truth + rng.normal(0, 0.05)  # what the sampler sees
        study.tell(trial, value)
        if value > observed:  # the best trial so far by what was observed, scored by its noiseless value
            observed, chosen = value, truth
        best.append(chosen)
    return times, best


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
        for arm in ("tpe", "bounded"):
            results = [run(arm, seed, args.trials, Path(folder)) for seed in range(args.seeds)]
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
