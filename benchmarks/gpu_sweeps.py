"""Real ``meminject sweep`` commands on one device, measured from outside (part 3 of gpu_check.sh).

Run by hand::

    python benchmarks/gpu_sweeps.py --device cuda --summary gpu_summary.md     # on a GPU (about 4 min)
    python benchmarks/gpu_sweeps.py --device cpu --smoke                        # this script, on a small subset

Each sweep runs as ``python -m meminject sweep ...`` in a fresh folder of its own (journal and a
SQLite MLflow store there, ``tracking.writer=process``, ``workers=1``), as a user would run it:

1. the paper grid's unembed slice (every layer × τ 1..15) of SmolLM2 on the 1,000
   2WikiMultiHop prompts, in float32 and in bfloat16;
2. a TPE sweep (``sweep=tpe``, 60 trials) on the same prompts, float32.

For each: its wall time (model load and clean pass included), trials/s over its trials (first
start to last end, from the study), the share of that span outside forward passes (1 − the
trials' ``trial_seconds`` summed over the span; a stacked pass's time is split among its
trials), and its peak device memory (``nvidia-smi`` per process on CUDA, resident memory on a
CPU), sampled every 0.2 s. Then the float32 and bfloat16 grids, point by point: Spearman rank
correlation, top-5 overlap and the largest difference in mean gain. Every figure is measured in
this run; the summary (Markdown) goes to ``--summary`` and to stdout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _procs import descendants  # benchmarks/ is on sys.path when a script runs

import numpy as np

SMOKE = {"limit": 8, "layers": "choice(0, 15, 29)", "tweaks": "choice(1, 8)", "tpe_trials": 6}


def _peak_memory_mib(pid: int, device: str, stop: threading.Event, out: list[float]) -> None:
    """Peak memory of the process tree under ``pid`` until ``stop``: GPU memory on CUDA, RSS on a CPU."""
    peak = 0.0
    while not stop.is_set():
        pids = {pid, *descendants(pid)}
        if device == "cuda":
            query = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            ).stdout
            used = sum(
                float(m) for p, m in (line.split(",") for line in query.splitlines() if "," in line) if int(p) in pids
            )
        else:
            rss = subprocess.run(
                ["ps", "-o", "rss=", "-p", ",".join(map(str, pids))], capture_output=True, text=True
            ).stdout.split()
            used = sum(int(r) for r in rss) / 1024
        peak = max(peak, used)
        stop.wait(0.2)
    out.append(peak)


def run_sweep(folder: Path, name: str, device: str, args: list[str]) -> dict:
    """One ``meminject sweep`` in ``folder``; returns its figures and its complete trials."""
    import optuna

    from meminject.store._storage import open_storage

    cmd = [sys.executable, "-m", "meminject", "sweep", f"study={name}", f"model.device={device}", *args]
    cmd += ["workers=1", "progress=false", "tracking.writer=process"]
    started = time.perf_counter()
    stop, peak = threading.Event(), []
    with open(folder / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        sampler = threading.Thread(target=_peak_memory_mib, args=(proc.pid, device, stop, peak))
        sampler.start()
        code = proc.wait()
        stop.set()
        sampler.join()
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{name}: exit {code}\n" + (folder / f"{name}.log").read_text()[-3000:])
    study = optuna.load_study(study_name=name, storage=open_storage(str(folder / "mlruns" / "optuna.journal")))
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    computing = sum(float(t.user_attrs.get("trial_seconds", 0.0)) for t in done)
    return {
        "name": name,
        "trials": len(done),
        "wall_s": wall,
        "trials_per_s": len(done) / max(span, 1e-9),
        "outside": max(0.0, 1.0 - computing / max(span, 1e-9)),
        "peak_mib": peak[0] if peak else float("nan"),
        "values": {_point(t.params): t.value for t in done},
    }


def _point(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help=f"a small subset: {SMOKE}")
    parser.add_argument("--summary", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the sweeps (default: a fresh tmp dir)")
    args = parser.parse_args(argv)
    from scipy.stats import spearmanr

    folder = args.dir or Path(tempfile.mkdtemp(prefix="meminject-gpu-sweeps-"))
    folder.mkdir(parents=True, exist_ok=True)
    data = ["model=smollm2-135m", "data=2wikimultihop", "memory.type=correct"]
    grid_axes = ["memory.encoding=unembed"]
    tpe_trials = 60
    if args.smoke:
        data.append(f"data.limit={SMOKE['limit']}")
        grid_axes += [f"injection.layer={SMOKE['layers']}", f"injection.tweak={SMOKE['tweaks']}"]
        tpe_trials = SMOKE["tpe_trials"]
    rows = []
    for dtype in ("float32", "bfloat16"):
        rows.append(
            run_sweep(
                folder, f"grid-{dtype}", args.device, ["sweep=paper_grid", *data, *grid_axes, f"model.dtype={dtype}"]
            )
        )
        print(f"  {rows[-1]['name']}: {rows[-1]['trials']} trials, {rows[-1]['wall_s']:.0f} s", file=sys.stderr)
    rows.append(
        run_sweep(
            folder, "tpe-float32", args.device, ["sweep=tpe", *data, f"n_trials={tpe_trials}", "model.dtype=float32"]
        )
    )
    memory = "peak GPU memory" if args.device == "cuda" else "peak RSS"
    lines = [
        f"## meminject sweep on {args.device}{' (smoke subset)' if args.smoke else ''}, folder {folder}",
        "",
        f"| sweep | trials | wall (s, load included) | trials/s | share outside forwards | {memory} (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['trials']} | {r['wall_s']:.1f} | {r['trials_per_s']:.2f} | {100 * r['outside']:.1f}% | {r['peak_mib']:.0f} |"
        )
    f32, b16 = rows[0]["values"], rows[1]["values"]
    shared = sorted(set(f32) & set(b16))
    a, b = np.array([f32[p] for p in shared]), np.array([b16[p] for p in shared])
    top = lambda v: set(np.argsort(-v)[:5])  # noqa: E731
    lines += [
        "",
        f"float32 vs bfloat16 grid, {len(shared)} points: Spearman {spearmanr(a, b).statistic:.4f}, "
        f"top-5 overlap {len(top(a) & top(b))}/5, max |Δ mean gain| {np.abs(a - b).max():.2e}",
    ]
    text = "\n".join(lines)
    print(text)
    if args.summary:
        args.summary.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
