"""The worker loop: ask trials, hand them to :mod:`._run`, until the budget or grid is used up.

Any number of workers share one study. Grid points are taken atomically from the queue;
TPE/random workers share a global budget. A worker whose trial was failed as stale by
another worker (it stalled past the grace period) drops that trial wherever it notices and
carries on. Cleanup after an error or Ctrl-C runs with SIGINT/SIGTERM held back, so no trial
or run is left RUNNING by an interrupt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..config import load_run_config
from ..core import _interrupts as interrupts
from ..core._errors import ConfigError
from ..store._recovery import DEFAULT_HEARTBEAT, StaleTrialRecovery
from ..tracking._schema import ATTR_PHASE, ATTR_ROUND
from ..tracking._tracker import Tracker
from ._run import Asked, TrialContext, fail_pending, run_trials, signals_held, writer_failed
from ..search._settings import SweepSpec
from ..search._pruning import make_pruner
from ..store._storage import load_study, open_storage
from ..search._study import (
    ATTR_HEARTBEAT,
    ATTR_PARENT,
    ATTR_SPEC,
    DONE,
    budget,
    leader,
    make_sampler,
    register_worker,
    space_of,
)
from ._ask import ask_trials
from ._trial import TrialRunner, is_out_of_memory

__all__ = ["run_worker", "CoordinatorGone", "writer_kind"]

log = logging.getLogger("meminject")

QUEUED = ("grid", "adaptive")  # samplers whose points are queued, not sampled


class CoordinatorGone(Exception):
    """The sweep process that started this worker has ended: stop after the current trials."""


def _check_coordinator() -> None:
    interrupts.check()  # a Ctrl-C whose KeyboardInterrupt Python lost in a finalizer
    if _coordinator_gone():
        raise CoordinatorGone()


def run_worker(
    study_name: str,
    storage_url: str | None,
    *,
    worker_index: int | None = None,
    progress: bool = True,
    max_trials: int | None = None,
) -> int:
    """Run trials of a prepared study until its budget or grid is used up; returns trials run here."""
    spec, study, recovery, (interval, grace), number = _open_study(study_name, storage_url, worker_index)
    base = load_run_config(spec.overrides)
    space = space_of(spec, base)
    total = budget(spec, space)
    tracker = Tracker.from_config(base, study=study_name)
    if tracker is not None:
        tracker.follow(study.user_attrs.get(ATTR_PARENT))
    recovery.tracker = tracker
    # grid and adaptive points come in same-layer runs (search._grid.pruned_grid_order)
    runner = TrialRunner(chunks=spec.chunks, stack_chunks=spec.sampler in QUEUED, first_chunk=spec.first_chunk)
    bar = None  # made when a first trial is asked: no bar at 100% when there was nothing to run
    ran = 0
    per_forward = runner.trials_per_forward(base)
    waiter = _RunningWaiter(int(interval), int(grace))
    context = TrialContext(study, spec, runner, tracker, study.user_attrs.get(ATTR_PARENT), number)
    context.writer = _start_writer(base, tracker, context.parent_run_id)
    try:
        while max_trials is None or ran < max_trials:
            _check_coordinator()
            want = per_forward if max_trials is None else min(per_forward, max_trials - ran)
            with signals_held():  # a trial asked but not yet ours to clean up would stay RUNNING
                asked = ask_trials(study, spec, space, total, want, storage_url)
                context.owned.update((t.number, t) for t, _ in asked)
            if not asked:
                if waiter.should_wait(study):
                    continue  # other workers' trials still running: they finish, or go stale and come back to us
                break
            if progress and bar is None:
                bar = _progress_bar(study, study_name, total)
            if not _run_or_requeue(context, asked):
                per_forward = 1  # after an out-of-memory error: one trial per pass
                continue
            ran += len(asked)
            _after_batch(context, bar, len(asked))
        failure = writer_failed(context, _close_writer(context, timeout=_WRITER_WAIT_S))
        if failure is not None:  # the results are in the study; their runs are written on resume
            raise failure
    except BaseException as exc:
        _clean_up_after(context, tracker, exc)
        if not isinstance(exc, CoordinatorGone):
            raise
        log.warning("worker %d: its sweep process has ended; stopping (rerun the sweep to resume)", number)
    finally:
        if bar is not None:
            bar.close()
    return ran


def _run_or_requeue(context: TrialContext, asked: Asked) -> bool:
    """Run the asked trials; False after an out-of-memory error, when they were failed cleanly,
    re-queued, and the batch budget halved."""
    try:
        run_trials(context, asked)
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is survivable
        if not is_out_of_memory(exc):
            raise
        _requeue_after_oom(context.runner, context.spec, context.study, asked)
        return False
    return True


def _after_batch(context: TrialContext, bar: Any, n: int) -> None:
    """A writer's failure stops the worker (the results are in the study, their runs are
    written on resume); otherwise the bar moves on."""
    failure = writer_failed(context)
    if failure is not None:
        raise failure
    if bar is not None:
        bar.update(n)
        bar.set_postfix(**leader(context.study))


_WRITER_WAIT_S = 300.0  # a finished worker waits this long for its writer's pending runs
_WRITER_WAIT_ON_STOP_S = 10.0  # after Ctrl-C or an error: what is left is written on resume


def writer_kind(base: Any) -> str:
    """``tracking.writer`` as it runs: ``auto`` is ``process`` when the trials run on a GPU (a
    trial takes milliseconds there, and spare cores write MLflow beside it) and ``inline`` on a
    CPU (where a writer process takes its CPU from the forward passes: README, Performance)."""
    if base.tracking.writer != "auto":
        return base.tracking.writer
    from ..engine import resolve_device

    return "process" if resolve_device(base.model.device).type == "cuda" else "inline"


def _start_writer(base: Any, tracker: Tracker | None, parent_run_id: str | None) -> Any:
    """The writer process of ``tracking.writer=process`` (and of ``auto`` on a GPU; None
    otherwise), started before the first trial: it imports MLflow while the model loads."""
    if tracker is None or not parent_run_id or writer_kind(base) != "process":
        return None
    from ._writer import RunWriter

    return RunWriter(tracker)


def _close_writer(context: TrialContext, timeout: float) -> Any:
    """Wait (bounded) for the writer's pending runs and stop it; returns it (None: there was none)."""
    writer, context.writer = context.writer, None
    if writer is not None:
        with signals_held():  # a second Ctrl-C must not cut the wait in half
            writer.close(timeout=timeout)
    return writer


def _open_study(
    study_name: str, storage_url: str | None, worker_index: int | None
) -> tuple[SweepSpec, optuna.Study, StaleTrialRecovery, tuple[Any, Any], int]:
    """The prepared study and its spec, reopened with heartbeats (this worker's trials beat;
    stale trials of dead workers are re-queued), and this worker's number."""
    probe = load_study(study_name, storage_url)
    if ATTR_SPEC not in probe.user_attrs:
        raise ConfigError(f"study {study_name!r} was not created by meminject sweep")
    spec = SweepSpec.from_json(probe.user_attrs[ATTR_SPEC])
    recovery = StaleTrialRecovery()
    interval, grace = probe.user_attrs.get(ATTR_HEARTBEAT, DEFAULT_HEARTBEAT)
    storage = open_storage(storage_url, heartbeat=(int(interval), int(grace)), recovery=recovery)
    number = register_worker(probe, storage_url) if worker_index is None else worker_index
    study = optuna.load_study(
        study_name=study_name, storage=storage, sampler=make_sampler(spec, number), pruner=make_pruner(spec)
    )
    return spec, study, recovery, (interval, grace), number


def _progress_bar(study: optuna.Study, study_name: str, total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=len(study.get_trials(deepcopy=False, states=DONE)),
        desc=study_name,
        unit="trial",
        dynamic_ncols=True,
    )


def _requeue_after_oom(runner: TrialRunner, spec: SweepSpec, study: optuna.Study, asked: Asked) -> None:
    """The trials were failed cleanly by run_trials; free memory, shrink, re-queue the points."""
    scale = runner.shrink_after_oom()
    if spec.sampler in QUEUED:
        for trial, params in asked:
            kept = {k: v for k, v in trial.user_attrs.items() if k in (ATTR_PHASE, ATTR_ROUND)}
            study.enqueue_trial(params, user_attrs=kept or None, skip_if_exists=False)
    log.warning(
        "out of memory in trial(s) %s: failed and re-queued; continuing with %g× the batch budget",
        [t.number for t, _ in asked],
        scale,
    )


def _clean_up_after(context: TrialContext, tracker: Tracker | None, exc: BaseException) -> None:
    """Ctrl-C, SIGTERM, the coordinator gone, or an error: nothing of ours stays RUNNING. The
    trials are failed first, then the writer gets its (short) wait: what it leaves is written on resume."""
    with signals_held():
        try:
            _fail_owned(context, exc)
        finally:  # the writer is stopped even when failing the trials raised (a broken storage)
            _close_writer(context, timeout=_WRITER_WAIT_ON_STOP_S)
        if isinstance(exc, CoordinatorGone) or _coordinator_gone(
            wait=1.0 if isinstance(exc, KeyboardInterrupt) else 0.0
        ):
            _close_parent_if_orphaned(tracker, context.parent_run_id)


def _coordinator_gone(wait: float = 0.0) -> bool:
    """Whether the sweep process that started this worker has ended (or is ending).

    Its death is the usual reason for a worker's SIGTERM (PR_SET_PDEATHSIG), but the signal
    comes when its *main thread* exits: the worker may then still count a dying thread of it
    as its parent, so the coordinator's own state is read too, for up to ``wait`` seconds.
    """
    coordinator = os.environ.get("MEMINJECT_COORDINATOR_PID")
    if not coordinator:
        return False
    deadline = time.monotonic() + wait
    while True:
        if os.getppid() != int(coordinator):
            return True
        try:  # /proc/PID/stat: "pid (name) STATE ..."; Z = exited (a zombie), X = dead
            state = Path(f"/proc/{coordinator}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return os.path.exists("/proc/self")  # no /proc entry (on Linux): gone
        if state in ("Z", "X", "x"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _fail_owned(ctx: TrialContext, exc: BaseException) -> None:
    """Fail this worker's trials that are still RUNNING (asked, not yet told)."""
    running = {t.number for t in ctx.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    pending = {n: t for n, t in ctx.owned.items() if n in running}
    trials = ctx.study.get_trials(deepcopy=False) if pending else []  # read once: trial number = index
    runs = {n: trials[n].user_attrs.get("mlflow_run_id") for n in pending}
    fail_pending(ctx, pending, {n: r for n, r in runs.items() if r}, exc)


def _close_parent_if_orphaned(tracker: Any, parent_run_id: str | None) -> None:
    if tracker is None or not parent_run_id:
        return
    with contextlib.suppress(Exception):  # the coordinator can no longer close it
        tracker.finish(parent_run_id, "KILLED")


class _RunningWaiter:
    """When nothing is left to ask but trials of other workers still run, wait for them: each
    either completes, or (its worker dead) goes stale and is re-queued for a live worker."""

    def __init__(self, interval: int, grace: int) -> None:
        self.pause = max(0.2, min(float(interval), 5.0))
        self.patience = 2.0 * grace + 2.0 * interval  # a running set that outlives this never beats
        self.since: float | None = None
        self.running: set[int] = set()

    def should_wait(self, study: optuna.Study) -> bool:
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        if not running:
            return False
        if running != self.running:
            self.running, self.since = running, time.monotonic()
        elif self.since is not None and time.monotonic() - self.since > self.patience:
            log.warning(
                "trials %s stay RUNNING without heartbeats; leaving them (rerun the sweep to resume)", sorted(running)
            )
            return False
        time.sleep(self.pause)
        return True
