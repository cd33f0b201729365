"""Per-trial overhead: everything a sweep does per trial outside the forward passes.

Run by hand (not a test)::

    python benchmarks/trial_overhead.py                 # tiny model (trials of milliseconds), 60 trials
    python benchmarks/trial_overhead.py --trials 200 --figures
    MEMINJECT_DATA_DIR=../shared/data python benchmarks/trial_overhead.py --model smollm2-135m --data handwritten --trials 40

A TPE sweep runs in this process with MLflow on (SQLite in a temporary folder); each phase
of the worker loop is wrapped with a timer: asking the sampler, the trial's computation
(``TrialRunner.run_many``), Optuna bookkeeping (trial key, attributes, tell), heartbeats,
the MLflow run (create, params/metrics/artifacts/close) and the per-trial figure. The overhead
is the worker loop's wall time (from its first ask) minus its computation, per trial: all it
spends outside the forward passes, phases that no timer wraps included. ``--no-tracking`` runs
the same trials (same seed) without MLflow, to price tracking as a whole. Prints ms per trial
and as a share of ``--trial-ms`` (a SmolLM2 trial on 2 CPU cores takes 600-2,300 ms; see
trial_throughput.py) and of this run's own trials.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TIMES: dict[str, float] = defaultdict(float)
FIRST: dict[str, float] = {}  # phase -> when it was first entered
MLFLOW = "MLflow run (params, metrics, artifacts)"
LOOP = "worker loop (wall)"


def wrap(module, name: str, phase: str) -> None:
    original = getattr(module, name)

    def timed(*args, **kwargs):
        started = time.perf_counter()
        FIRST.setdefault(phase, started)
        try:
            return original(*args, **kwargs)
        finally:
            TIMES[phase] += time.perf_counter() - started

    setattr(module, name, timed)


def wrap_cm(module, name: str, phase: str) -> None:
    original = getattr(module, name)

    @contextmanager
    def timed(*args, **kwargs):
        started = time.perf_counter()
        with original(*args, **kwargs) as value:
            TIMES[phase] += time.perf_counter() - started
            yield value
            started = time.perf_counter()
        TIMES[phase] += time.perf_counter() - started

    setattr(module, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument(
        "--model", default="tiny", help="tiny (trials of milliseconds) or smollm2-135m (the CPU reference trial)"
    )
    parser.add_argument("--data", default="demo")
    parser.add_argument("--figures", action="store_true", help="per-trial figures on (tracking.trial_figures=true)")
    parser.add_argument(
        "--trial-ms",
        type=float,
        default=750.0,
        help="a reference trial's compute time, for the share (default: a mean SmolLM2 trial)",
    )
    parser.add_argument("--pruner", default="none")
    parser.add_argument(
        "--no-tracking",
        action="store_true",
        help="MLflow off: the same trials (same seed), to price tracking as a whole",
    )
    args = parser.parse_args()

    from meminject.cli import main as cli
    from meminject.sweep import _commands, _run, _trial, _worker
    from meminject.sweep import _figures as figures

    wrap(_commands, "run_worker", LOOP)
    wrap(_worker, "_ask_trials", "ask (sampler, budget)")
    wrap(_trial.TrialRunner, "run_many", "compute (forward passes)")
    wrap(_run, "record_in_optuna", "Optuna attributes")
    wrap(_run, "trial_key", "Optuna attributes")
    wrap(_run, "record_in_mlflow", MLFLOW)
    wrap(_run, "_start_run", "MLflow run (create)")
    wrap(figures, "per_prompt_gains", "per-trial figure")
    wrap_cm(_run, "heartbeats", "heartbeats (start/stop)")
    import optuna

    wrap(optuna.Study, "tell", "Optuna tell")

    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        code = cli(
            [
                "sweep",
                f"model={args.model}",
                "model.device=cpu",
                f"data={args.data}",
                "sweep=smoke",
                f"n_trials={args.trials}",
                "study=overhead",
                "progress=false",
                f"tracking.trial_figures={str(args.figures).lower()}",
                f"pruner={args.pruner}",
                "injection.layer=range(0, all)",
                *(["tracking.enabled=false"] if args.no_tracking else []),
            ]
        )
    assert code == 0
    n = args.trials
    figure = TIMES.pop("per-trial figure", 0.0)  # inside the MLflow run's time
    # the loop from its first ask to its end (opening the study and the tracker, once, left out)
    loop = TIMES.pop(LOOP) - (FIRST["ask (sampler, budget)"] - FIRST[LOOP])
    compute = TIMES["compute (forward passes)"]
    print(
        f"{n} trials of {args.model} on {args.data}: worker loop {loop:.1f} s from its first ask = {1000 * loop / n:.1f} ms per trial (model load and clean pass included)"
    )
    print(f"{'phase':42s} {'ms/trial':>9s}")
    for phase, seconds in sorted(TIMES.items(), key=lambda kv: -kv[1]):
        print(f"{phase:42s} {1000 * seconds / n:9.2f}")
    print(f"{'  of which the per-trial figure':42s} {1000 * figure / n:9.2f}")
    overhead = loop - compute  # what the worker spends outside the forward passes
    print(
        f"overhead per trial (worker loop − compute): {1000 * overhead / n:.1f} ms = {100 * overhead / n / (args.trial_ms / 1000):.1f}% of a {args.trial_ms:.0f} ms trial"
    )
    print(
        f"(compute per trial: {1000 * compute / n:.1f} ms; share of this run's own trials: {100 * overhead / compute:.1f}%)"
    )


if __name__ == "__main__":
    main()
