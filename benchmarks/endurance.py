"""Endurance: a long TPE sweep on the tiny model, with MLflow on, and what it costs over time.

Run by hand (not a test), e.g.::

    HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/endurance.py               # 1,500 trials, 2 workers
    python benchmarks/endurance.py --trials 200 --workers 2 --dir /tmp/endurance  # a shorter one
    python benchmarks/endurance.py tracking.writer=process                         # extra sweep overrides

It runs ``meminject sweep sweep=tpe model=tiny model.device=cpu data.limit=6 n_trials=N
workers=W progress=false`` on its own stores in a fresh folder (``optuna.journal`` and a SQLite
``mlflow.db``), samples the resident memory (RSS) of every process of the sweep with ``ps``
while it runs, then prints:

- trials/s over the first 200 and the last 200 complete trials (from the trials' start and
  completion datetimes in the study), and overall;
- the workers' RSS: first sample, last sample and peak, per process (MiB);
- the journal's and the MLflow store's size;
- the wall time of ``meminject best`` on the finished study.

Every figure is measured in this run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _procs import descendants  # benchmarks/ is on sys.path when a script runs

TINY = ["model=tiny", "model.device=cpu", "data.limit=6"]


def _rss_mib(pids: list[int]) -> dict[int, float]:
    if not pids:
        return {}
    out = subprocess.run(
        ["ps", "-o", "pid=,rss=,stat=", "-p", ",".join(map(str, pids))], capture_output=True, text=True
    ).stdout
    rows = (line.split() for line in out.splitlines() if line.strip())
    return {int(p): int(r) / 1024 for p, r, stat in rows if not stat.startswith("Z") and int(r)}  # no zombies


def _rate(trials) -> float:
    """Trials per second of a run of consecutive complete trials: count over first start to last end."""
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    return len(trials) / max((end - start).total_seconds(), 1e-9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--window", type=int, default=200, help="trials in the first/last window")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the stores (default: a fresh tmp dir)")
    parser.add_argument("overrides", nargs="*", help="more sweep overrides, e.g. tracking.writer=process")
    args = parser.parse_args(argv)

    folder = args.dir or Path(tempfile.mkdtemp(prefix="meminject-endurance-"))
    folder.mkdir(parents=True, exist_ok=True)
    journal, db = folder / "optuna.journal", folder / "mlflow.db"
    study = "endurance"
    stores = [f"storage={journal}", f"tracking.uri=sqlite:///{db}", f"study={study}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "meminject", "sweep", "sweep=tpe", *TINY, *stores]
    cmd += [f"n_trials={args.trials}", f"workers={args.workers}", "progress=false", *args.overrides]
    print("folder:", folder, flush=True)
    started = time.perf_counter()
    samples: dict[int, list[float]] = {}
    with open(folder / "sweep.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            for pid, mib in _rss_mib([proc.pid, *descendants(proc.pid)]).items():
                samples.setdefault(pid, []).append(mib)
            time.sleep(args.sample_s)
    wall = time.perf_counter() - started
    print(f"sweep: exit {proc.returncode}, {wall:.0f} s wall", flush=True)
    if proc.returncode:
        print((folder / "sweep.log").read_text()[-2000:])

    import optuna

    from meminject.store._storage import open_storage

    loaded = optuna.load_study(study_name=study, storage=open_storage(str(journal)))
    done = sorted(
        (t for t in loaded.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE),
        key=lambda t: t.datetime_complete,
    )
    print(f"complete trials: {len(done)}")
    if len(done) >= 2 * args.window:
        first, last = _rate(done[: args.window]), _rate(done[-args.window :])
        print(f"trials/s: first {args.window} {first:.2f}, last {args.window} {last:.2f}, overall {_rate(done):.2f}")
        steps = [_rate(done[i : i + args.window]) for i in range(0, len(done) - args.window + 1, args.window)]
        print("trials/s by window of", args.window, ":", " ".join(f"{r:.2f}" for r in steps))
    by_worker: dict = {}
    for t in sorted(done, key=lambda t: t.number):  # each trial's own record of its worker's memory
        if t.user_attrs.get("worker_rss_mb") is not None:
            by_worker.setdefault(t.user_attrs.get("worker_index"), []).append(t.user_attrs["worker_rss_mb"])
    for worker, values in sorted(by_worker.items(), key=lambda kv: str(kv[0])):
        print(
            f"RSS worker {worker} after its trials (worker_rss_mb): first {values[0]:.0f} MiB, "
            f"after {len(values) // 2} trials {values[len(values) // 2]:.0f} MiB, last {values[-1]:.0f} MiB ({len(values)} trials)"
        )
    print("RSS sampled with ps (the first samples are taken while the processes start):")
    for pid, values in sorted(samples.items()):
        if len(values) >= 2:
            role = "coordinator" if pid == proc.pid else "worker"
            spread = f"first {values[0]:.0f} MiB, last {values[-1]:.0f} MiB, peak {max(values):.0f} MiB"
            print(f"RSS {role} pid {pid}: {len(values)} samples, {spread}")
    for path in (journal, db):
        print(f"{path.name}: {path.stat().st_size / 2**20:.1f} MiB")
    best_started = time.perf_counter()
    best = subprocess.run(
        [sys.executable, "-m", "meminject", "best", f"storage={journal}", f"study={study}"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    print(f"best: exit {best.returncode}, {time.perf_counter() - best_started:.1f} s wall")
    if best.returncode:
        print(best.stdout[-1000:], best.stderr[-2000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
