"""Per-trial overhead of a sweep, as two numbers: the critical path and the total work.

Run by hand (not a test)::

    MEMINJECT_DATA_DIR=../shared/data python benchmarks/trial_overhead.py       # the whole table (about 10 min)
    python benchmarks/trial_overhead.py --models tiny --trials 64                  # tiny only
    python benchmarks/trial_overhead.py --models tiny --per-forward 16 --writers process --no-tracking
    python benchmarks/trial_overhead.py --per-forward 16 --writers process --sampler random   # Optuna's sampling left out

Each cell (model × trials per forward × ``tracking.writer``) is a TPE sweep in a child process
of its own, with MLflow on (SQLite in a fresh folder) and every trial at one layer, so that
``perf.trials_per_forward=16`` stacks 16 trials in each forward pass. In the child, the worker
loop's phases are wrapped with timers (wall and CPU):

* **critical path**: the worker loop's wall time from its first ask to its last trial, minus
  the computation (``TrialRunner.run_many``), per trial. This is how long the loop is stalled
  outside the forward passes: ask, Optuna writes, tell, heartbeats, and on the inline path the
  MLflow run. The wait for the writer's last runs at the end (``drain``) is shown apart.
* **total work**: CPU seconds spent on bookkeeping per trial: the worker process's CPU over
  the same span minus its CPU in the computation, plus (``tracking.writer=process``) the
  writer process's CPU while serving, which on 2 cores competes with the forward passes.

``inline`` is the old path (MLflow written in the worker loop), ``process`` the writer process.
The figures of one invocation are measured in that run, one cell after another, on the same
machine. ``--no-tracking`` adds a row per cell without MLflow, for what Optuna alone costs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LAYER = {"tiny": 1, "smollm2-135m": 15}  # every trial at this layer: 16 asked trials stack in one pass
DATA = {"tiny": "demo", "smollm2-135m": "handwritten"}
WALL: dict[str, float] = defaultdict(float)
CPU: dict[str, float] = defaultdict(float)
FIRST: dict[str, tuple[float, float]] = {}  # phase -> (wall, CPU) when first entered
LOOP, COMPUTE, ASK, DRAIN = "worker loop", "compute (forward passes)", "ask (sampler, budget)", "writer drain (end)"


def _wrap(owner, name: str, phase: str) -> None:
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        FIRST.setdefault(phase, (wall, cpu))
        try:
            return original(*args, **kwargs)
        finally:
            WALL[phase] += time.perf_counter() - wall
            CPU[phase] += time.process_time() - cpu

    setattr(owner, name, timed)


def _wrap_cm(owner, name: str, phase: str) -> None:
    original = getattr(owner, name)

    @contextmanager
    def timed(*args, **kwargs):
        wall = time.perf_counter()
        with original(*args, **kwargs) as value:
            WALL[phase] += time.perf_counter() - wall
            yield value
            wall = time.perf_counter()
        WALL[phase] += time.perf_counter() - wall

    setattr(owner, name, timed)


def run_cell(model: str, per_forward: int, writer: str, trials: int, tracking: bool, sampler: str = "tpe") -> dict:
    """One sweep in this process, its phases timed; returns the cell's figures."""
    from meminject.cli import main as cli
    from meminject.cli import _commands
    from meminject.runner import _run, _trial, _worker, _writer

    _wrap(_commands, "run_worker", LOOP)
    _wrap(_worker, "ask_trials", ASK)
    _wrap(_worker, "_close_writer", DRAIN)
    _wrap(_trial.TrialRunner, "run_many", COMPUTE)
    _wrap(_run, "set_many_user_attrs", "Optuna result attributes")
    _wrap(_run, "set_user_attrs", "Optuna trial-key attributes")
    _wrap(_run, "record_in_mlflow", "MLflow run (params, metrics, artifacts)")
    _wrap(_run, "_start_run", "MLflow run (create)")
    _wrap(_writer.RunWriter, "submit", "hand over to the writer")
    _wrap(_run, "trial_config", "trial configs (built from the params)")
    _wrap(_run, "optuna_record", "result attributes (built)")
    _wrap(_run, "_record_of", "the writer's record (built)")
    from meminject.runner import _record

    _wrap(_record, "_release_freed_memory", "  of which: heap trim (every few s)")
    _wrap_cm(_run, "heartbeats", "heartbeats (start/stop)")
    _wrap(_run, "tell_many", "Optuna tell (a pass's trials in one write)")
    _wrap(_worker, "ask_many", "  of the ask: create the trials (one write)")  # parts of ASK
    _wrap(_worker, "_suggest", "  of the ask: sample and store its params")
    _wrap(_worker, "counted", "  of the ask: count the budget")
    _wrap(_worker, "recover_stale_trials", "  of the ask: stale-trial check")
    writers: list = []
    original_init = _writer.RunWriter.__init__

    def keep(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        writers.append(self)

    _writer.RunWriter.__init__ = keep
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        code = cli(
            [
                "sweep",
                "sweep=smoke",
                f"model={model}",
                "model.device=cpu",
                f"data={DATA.get(model, 'handwritten')}",
                f"injection.layer={LAYER.get(model, 1)}",
                f"perf.trials_per_forward={per_forward}",
                f"tracking.writer={writer}",
                f"n_trials={trials}",
                "study=overhead",
                "progress=false",
                *([] if sampler == "tpe" else [f"sampler={sampler}"]),
                *([] if tracking else ["tracking.enabled=false"]),
            ]
        )
    if code != 0:
        raise SystemExit(f"the sweep exited {code}")
    # from the first ask to the end of the last trial: opening the study and the writer's start left out
    # (the model load and clean pass come before the first ask)
    loop = WALL[LOOP] - (FIRST[ASK][0] - FIRST[LOOP][0]) - WALL[DRAIN]
    loop_cpu = CPU[LOOP] - (FIRST[ASK][1] - FIRST[LOOP][1]) - CPU[DRAIN]
    writer_cpu = sum(w.cpu_s for w in writers)
    return {
        "model": model if sampler == "tpe" else f"{model} ({sampler})",
        "per_forward": per_forward,
        "writer": writer if tracking else "off",
        "trials": trials,
        "loop_s": loop,
        "compute_s": WALL[COMPUTE],
        "critical_ms": 1000 * (loop - WALL[COMPUTE]) / trials,
        "drain_ms": 1000 * WALL[DRAIN] / trials,
        "worker_cpu_ms": 1000 * (loop_cpu - CPU[COMPUTE]) / trials,
        "writer_cpu_ms": 1000 * writer_cpu / trials,
        "compute_ms": 1000 * WALL[COMPUTE] / trials,
        "phases_ms": {
            k: 1000 * v / trials for k, v in sorted(WALL.items(), key=lambda kv: -kv[1]) if k not in (LOOP, COMPUTE)
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smollm2-135m")
    parser.add_argument("--per-forward", default="1,16", help="trials per forward pass (perf.trials_per_forward)")
    parser.add_argument("--writers", default="inline,process", help="tracking.writer values to compare")
    parser.add_argument("--trials", type=int, default=None, help="trials per cell (default: 96 tiny, 32 SmolLM2)")
    parser.add_argument("--no-tracking", action="store_true", help="also a row per cell with MLflow off")
    parser.add_argument(
        "--sampler",
        default="tpe",
        choices=("tpe", "random"),
        help="random: the critical path without TPE's own sampling",
    )
    parser.add_argument("--phases", action="store_true", help="print each cell's phases too")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # model,per_forward,writer,trials,tracking,sampler: the child
    args = parser.parse_args(argv)
    if args.cell:
        model, per_forward, writer, trials, tracking, sampler = args.cell.split(",")
        print(json.dumps(run_cell(model, int(per_forward), writer, int(trials), tracking == "1", sampler)))
        return 0

    rows = []
    for model in args.models.split(","):
        trials = args.trials or (96 if model == "tiny" else 32)
        for per_forward in map(int, args.per_forward.split(",")):
            cells = [(w, "1") for w in args.writers.split(",")] + ([("inline", "0")] if args.no_tracking else [])
            for writer, tracking in cells:
                cell = f"{model},{per_forward},{writer},{trials},{tracking},{args.sampler}"
                started = time.perf_counter()
                out = subprocess.run(
                    [sys.executable, __file__, "--cell", cell], capture_output=True, text=True, env=os.environ
                )
                if out.returncode != 0:
                    print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
                    return 1
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(
                    f"  ran {cell} in {time.perf_counter() - started:.0f} s: critical path {row['critical_ms']:.1f} ms/trial",
                    file=sys.stderr,
                )
                if args.phases:
                    for phase, ms in row["phases_ms"].items():
                        print(f"      {phase:42s} {ms:8.2f} ms/trial", file=sys.stderr)

    print(f"{os.cpu_count()} CPUs; ms per trial; bookkeeping CPU = worker CPU outside compute + writer CPU")
    header = "| model | trials/forward | writer | trials | compute | critical path | drain at end | worker CPU | writer CPU | bookkeeping CPU |"
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['per_forward']} | {r['writer']} | {r['trials']} | {r['compute_ms']:.1f} | "
            f"**{r['critical_ms']:.1f}** | {r['drain_ms']:.1f} | {r['worker_cpu_ms']:.1f} | {r['writer_cpu_ms']:.1f} | "
            f"**{r['worker_cpu_ms'] + r['writer_cpu_ms']:.1f}** |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
