"""The worker loop: ask trials, hand them to :mod:`._run`, until the budget or grid is used up.

Any number of workers share one study. Grid points are taken atomically from the queue;
TPE/random workers share a global budget. A worker whose trial was failed as stale by
another worker (it stalled past the grace period) drops that trial wherever it notices and
carries on. Cleanup after an error or Ctrl-C runs with SIGINT/SIGTERM held back, so no trial
or run is left RUNNING by an interrupt.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..config import load_run_config
from ..core import _interrupts as interrupts
from ..core._errors import ConfigError
from ._recovery import DEFAULT_HEARTBEAT, StaleTrialRecovery, recover_stale_trials
from ..tracking._tracker import Tracker
from ._optuna import ask_many, params_in_one_write, pop_queued_trial
from ._run import Asked, TrialContext, fail_pending, run_trials, signals_held, writer_failed
from ._settings import SweepSpec
from ._pruning import make_pruner
from ._storage import load_study, open_storage
from ._study import (
    ATTR_HEARTBEAT,
    ATTR_PARENT,
    ATTR_SPEC,
    ATTR_SURPLUS,
    DONE,
    budget,
    canonical_params,
    counted,
    leader,
    make_sampler,
    point_of,
    register_worker,
    space_of,
)
from ._trial import TrialRunner, is_out_of_memory

__all__ = ["run_worker", "repeats_of", "CoordinatorGone", "writer_kind"]

log = logging.getLogger("meminject")


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
    runner = TrialRunner(
        chunks=spec.chunks, stack_chunks=spec.sampler == "grid"
    )  # grid points come in same-layer runs (see _study)
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
                asked = _ask_trials(study, spec, space, total, want)
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
    if spec.sampler == "grid":
        for _, params in asked:
            study.enqueue_trial(params, skip_if_exists=False)
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


def _suggest(trial: optuna.Trial, space: Any) -> dict[str, Any]:
    """Sample every axis through the public suggest API (fixed params of a queued point win),
    the params stored in one write."""
    import optuna.distributions as od

    values = {}
    with params_in_one_write(trial):
        for axis in space.axes:
            d = axis.distribution
            if isinstance(d, od.CategoricalDistribution):
                values[axis.key] = trial.suggest_categorical(axis.key, d.choices)
            elif isinstance(d, od.IntDistribution):
                values[axis.key] = trial.suggest_int(axis.key, d.low, d.high, step=d.step, log=d.log)
            else:
                values[axis.key] = trial.suggest_float(axis.key, d.low, d.high, step=d.step, log=d.log)
    return values


def repeats_of(study: optuna.Study) -> int:
    """How many sampled points were given back unrun because the study already held them."""
    return sum(
        str(t.user_attrs.get(ATTR_SURPLUS, "")).startswith("duplicate")
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    )


def _give_back(study: optuna.Study, trial: optuna.Trial, why: str) -> None:
    trial.set_user_attr(ATTR_SURPLUS, why)
    study.tell(trial, state=TrialState.FAIL)


_POINTS: dict[tuple[str, int], str] = {}  # (study name, trial number) -> grid point: a trial's point never changes


def _earlier_holder(study: optuna.Study, trial: optuna.Trial, point: str) -> int | None:
    """The number of an earlier live trial holding the same grid point (two sweeps enqueued it
    at once), or None: the lowest-numbered live trial of a point runs it, later ones are given back."""
    for t in study.get_trials(deepcopy=False, states=(*DONE, TrialState.RUNNING, TrialState.WAITING)):
        if t.number >= trial.number or t.user_attrs.get(ATTR_SURPLUS):
            continue
        key = (study.study_name, t.number)
        if key not in _POINTS:
            _POINTS[key] = point_of(t)
        if _POINTS[key] == point:
            return t.number
    return None


def _ask_trials(study: optuna.Study, spec: SweepSpec, space: Any, total: int, want: int) -> Asked:
    """Up to ``want`` trials for this worker: queued grid points, or new sampler suggestions
    within the global budget (a slot another worker took meanwhile is given back)."""
    recover_stale_trials(study)  # a dead worker's trials: failed, their points re-queued
    if spec.sampler == "grid":
        return _ask_queued(study, space, total, want)
    return _ask_sampled(study, space, total, want)


def _ask_queued(study: optuna.Study, space: Any, total: int, want: int) -> Asked:
    asked: Asked = []
    for _ in range(want):
        if len(counted(study)) >= total:  # a budget lowered below the queued points: they wait
            break
        trial = pop_queued_trial(study)
        if trial is None:
            break
        params = _suggest(trial, space)
        earlier = _earlier_holder(study, trial, canonical_params(params))
        if earlier is not None:  # enqueued twice (concurrent sweeps): the earlier trial runs it
            _give_back(study, trial, f"duplicate of trial {earlier}")
            continue
        asked.append((trial, params))
    return asked


_MAX_REPEATS = 200  # sampled points in a row already in the study before the space counts as used up


def _ask_sampled(study: optuna.Study, space: Any, total: int, want: int) -> Asked:
    """The sampler's next trials, created in one write; those beyond the global budget (other
    workers asked meanwhile: their trials are numbered first) are given back. A point the study
    already holds (done, pruned, running or queued) is given back unrun, at no budget, and the
    sampler asked again (TPE over discrete axes repeats points); after ``_MAX_REPEATS`` in a
    row the space is taken as used up and the worker stops, saying so."""
    asked: Asked = []
    repeats = 0
    while len(asked) < want:
        n = min(want - len(asked), total - len(counted(study)))
        if n <= 0:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": ours beats itself
            trials = ask_many(study, n)
        taken = sorted(t.number for t in counted(study))
        for trial in trials:
            if bisect.bisect_left(taken, trial.number) >= total:  # the budget was used up ahead of it
                _give_back(study, trial, "over budget")
                continue
            params = _suggest(trial, space)
            earlier = _earlier_holder(study, trial, canonical_params(params))
            if earlier is not None:
                _give_back(study, trial, f"duplicate of trial {earlier}")
                taken.remove(trial.number)  # given back: it no longer holds a slot
                repeats += 1
                continue
            repeats = 0
            asked.append((trial, params))
        if repeats >= _MAX_REPEATS:
            log.warning(
                "the sampler proposed %d points in a row that the study already holds: every point of "
                "this search space looks evaluated; widen a range (or add values) to search further",
                repeats,
            )
            break
    return asked
