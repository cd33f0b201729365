"""Worker processes on this machine, watched by the sweep command (the coordinator).

Each worker gets its share of the CPU threads (or one GPU), its own sampler seed (it
registers with the study), and ends with its coordinator: Linux delivers SIGTERM to it when
the coordinator dies (PR_SET_PDEATHSIG), and it also checks between trials.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import optuna

from ..core import _interrupts as interrupts
from ..core._errors import MemInjectError
from ..core._secrets import STORAGE_ENV, TRACKING_ENV, secret_env
from ..store._storage import default_storage_url, open_storage
from ..search._study import DONE, leader

__all__ = ["spawn_workers", "die_with_parent", "worker_command", "placement"]

log = logging.getLogger("meminject")


def die_with_parent() -> None:
    """In a worker: receive SIGTERM when the process that started it exits (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the worker's between-trials check still notices


def _threads_for(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def placement(workers: int, n_gpus: int, visible: str | None) -> tuple[list[dict[str, str]], str]:
    """Where each worker runs, as the environment it adds, and the line that says so.

    With GPUs, worker i gets one device, round robin: the i-th of ``CUDA_VISIBLE_DEVICES`` when
    that is set (so ``CUDA_VISIBLE_DEVICES=2,3`` gives workers devices 2, 3, 2, ...), else device
    ``i mod n_gpus``; each worker then sees only its own device as ``cuda:0``. Without GPUs the
    CPU threads are shared out instead."""
    if n_gpus:
        names = [d.strip() for d in (visible or "").split(",") if d.strip()][:n_gpus] or [str(i) for i in range(n_gpus)]
        chosen = [names[i % len(names)] for i in range(workers)]
        shared = "" if workers <= len(names) else f" ({workers} workers on {len(names)} GPUs: some share one)"
        line = "workers on GPUs: " + ", ".join(f"worker {i} → GPU {d}" for i, d in enumerate(chosen)) + shared
        return [{"CUDA_VISIBLE_DEVICES": d} for d in chosen], line
    threads = str(_threads_for(workers))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "MEMINJECT_THREADS": threads}
    return [dict(env) for _ in range(workers)], f"{workers} workers on the CPU, {threads} thread(s) each"


def worker_command(
    study_name: str, storage_url: str | None, tracking: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """A spawned worker's argv and the environment it adds: no URL on the command line (``ps``
    shows it to every user); the storage and a tracking URL with a secret go in the environment."""
    cmd = [sys.executable, "-m", "meminject", "worker", f"study={study_name}", "progress=false"]
    env = {
        "MEMINJECT_COORDINATOR_PID": str(os.getpid()),
        STORAGE_ENV: storage_url or default_storage_url(),
        **secret_env(**{TRACKING_ENV: tracking}),
    }
    return cmd, env


def spawn_workers(
    study_name: str,
    storage_url: str | None,
    workers: int,
    total: int,
    progress: bool = True,
    tracking: str | None = None,
) -> None:
    """``workers`` worker processes on the study; ``tracking``: the full tracking URI (the study keeps it redacted)."""
    import torch

    procs = []
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    places, line = placement(workers, n_gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if n_gpus:
        log.info("%s", line)
    try:
        for place in places:
            cmd, extra = worker_command(study_name, storage_url, tracking)
            env = {**os.environ, **extra, **place}
            # quiet while it starts: a Ctrl-C before its handler is in place prints no traceback
            procs.append(subprocess.Popen(cmd, env=env, preexec_fn=interrupts.ignore_interrupts_until_ready))
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
        _watch(study, procs, total, progress)
    except KeyboardInterrupt:
        # The terminal's Ctrl-C reached the workers too (one process group); a `kill -INT` of
        # this process alone did not, nor does it reach a worker still starting (SIGINT ignored
        # until its handler is in place): pass it on once as SIGTERM, which a worker handles as
        # Ctrl-C, and which ends one still starting silently. Workers hold signals while cleaning up.
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        raise
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        raise MemInjectError(
            f"worker(s) {', '.join(map(str, failed))} exited with an error (see their output above); rerun the same command to resume"
        )


def _watch(study: optuna.Study, procs: list[subprocess.Popen], total: int, progress: bool) -> None:
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=study.study_name, unit="trial", dynamic_ncols=True, disable=not progress) as bar:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            interrupts.check()  # a Ctrl-C whose KeyboardInterrupt Python lost in a finalizer
            done = study.get_trials(deepcopy=False, states=DONE)
            bar.update(max(0, len(done) - bar.n))
            bar.set_postfix(**leader(study))
        bar.update(max(0, len(study.get_trials(deepcopy=False, states=DONE)) - bar.n))
