"""Running asked trials: compute them (stacked when they share a layer), beat meanwhile, and
record each result, first in Optuna (the result is safe once told), then in MLflow.

* A trial that fails is FAIL in both stores; cleanup runs with SIGINT/SIGTERM held back.
* A trial that another worker failed as stale meanwhile is dropped here, wherever that shows.
* When MLflow fails after its retries (a store locked for too long, a full disk), the result
  stays in Optuna and the worker stops with one line; the run is written on resume
  (:func:`meminject.runner._parent.reconcile_runs`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from ..core._errors import TrackingError, first_line, number_ranges
from ..core._interrupts import held
from ..store._recovery import heartbeats
from ..tracking._schema import trial_key
from ..tracking._tracker import Tracker, git_commit, redact
from ..store._optuna import set_many_user_attrs, set_user_attrs, storage_of, tell_many, trial_id_of
from ..search._pruning import monitor_for
from ._record import ATTR_KEY, optuna_record, record_in_mlflow
from ..search._settings import SweepSpec
from ._trial import TrialRunner, trial_config
from ._writer import TrialRecord
from ..tracking._schema import ATTR_ROUND, TAG_SAMPLER, TAG_SWEEP, TAG_WORKER

__all__ = ["TrialContext", "run_trials", "signals_held", "fail_pending", "writer_failed", "Asked"]

log = logging.getLogger("meminject")
Asked = list[tuple[optuna.Trial, dict[str, Any]]]


signals_held = held  # cleanup that must not be cut in half (see meminject.interrupts)


class TrialContext:
    """What every trial of a worker shares."""

    def __init__(
        self,
        study: optuna.Study,
        spec: SweepSpec,
        runner: TrialRunner,
        tracker: Tracker | None,
        parent_run_id: str | None,
        worker: int,
    ) -> None:
        self.study, self.spec, self.runner, self.tracker, self.parent_run_id, self.worker = (
            study,
            spec,
            runner,
            tracker,
            parent_run_id,
            worker,
        )
        self.owned: dict[int, optuna.Trial] = {}  # trials this worker asked for (told ones stay: harmless)
        self.writer: Any = None  # a RunWriter (tracking.writer=process): runs written off this loop


def run_trials(ctx: TrialContext, asked: Asked) -> None:
    """Run asked trials (one, or several sharing stacked passes) and record each in Optuna and
    MLflow, beating for them meanwhile (so a dead worker's trials are found stale and re-run).

    If anything fails, every trial not yet told is marked FAIL in both, then the error propagates.
    """
    with heartbeats(storage_of(ctx.study), [trial_id_of(trial) for trial, _ in asked]):
        _run_trials_beating(ctx, asked)


def _tracking_failed(ctx: TrialContext, numbers: list[int], exc: BaseException) -> TrackingError:
    uri = redact(ctx.tracker.uri) if ctx.tracker is not None else "-"
    return TrackingError(
        f"trial(s) {number_ranges(numbers)} are saved in the study, but MLflow at {uri} failed ({first_line(exc)}); "
        "fix the tracking store and rerun the same command: their runs are written then"
    )


@dataclass
class _Tally:
    """How far one call's asked trials have got: what a failure must clean up, what MLflow lacks."""

    pending: dict[int, optuna.Trial]  # not yet told
    run_ids: dict[int, str] = field(default_factory=dict)
    tracking_error: BaseException | None = None
    unrecorded: list[int] = field(default_factory=list)
    told_unlogged: set[int] = field(default_factory=set)  # in Optuna, their run not complete yet
    started_ms: int = 0  # when the trials began (the writer's runs start then)
    attrs: dict[int, dict[str, Any]] = field(default_factory=dict)  # written with the result (writer path)


def _run_trials_beating(ctx: TrialContext, asked: Asked) -> None:
    started = time.perf_counter()
    tally = _Tally({trial.number: trial for trial, _ in asked}, started_ms=int(time.time() * 1000))
    try:
        cfgs = _start_runs(ctx, asked, tally)
        live = [(t, p) for t, p in asked if t.number in cfgs and t.number in tally.pending]
        monitors = [monitor_for(t, ctx.spec.objective) if ctx.spec.pruner != "none" else None for t, _ in live]
        outcomes = ctx.runner.run_many([cfgs[t.number] for t, _ in live], monitors)
        seconds = (time.perf_counter() - started) / max(1, len(live))  # stacked trials share the cost
        _tell_and_record(ctx, live, outcomes, cfgs, seconds, tally)
    except BaseException as exc:
        with signals_held():
            fail_pending(ctx, tally.pending, tally.run_ids, exc)
            for number in tally.told_unlogged & set(
                tally.run_ids
            ):  # complete in Optuna: the resume writes and finishes the run
                with contextlib.suppress(Exception):
                    ctx.tracker.finish(tally.run_ids[number], "KILLED")
        raise
    if tally.tracking_error is not None:
        raise _tracking_failed(ctx, tally.unrecorded, tally.tracking_error) from tally.tracking_error


def _drop(ctx: TrialContext, tally: _Tally, trial: optuna.Trial) -> None:
    # This worker stalled past the grace period and another one failed the trial and
    # re-queued its point: the retry's result counts, this one is dropped.
    log.warning(
        "trial %d was failed as stale by another worker while running here; its point was re-queued", trial.number
    )
    tally.pending.pop(trial.number, None)
    if ctx.tracker is not None and trial.number in tally.run_ids:
        ctx.tracker.fail(tally.run_ids[trial.number], "stale: re-queued by another worker before this result arrived")


def _start_runs(ctx: TrialContext, asked: Asked, tally: _Tally) -> dict[int, Any]:
    """Each asked trial's config, its key on the trial and (tracking on) its MLflow run."""
    cfgs = {}
    for trial, params in asked:
        cfg = trial_config(ctx.spec.overrides, params)
        attrs = {ATTR_KEY: trial_key(cfg), "worker_index": ctx.worker}
        if ctx.writer is not None:  # one Optuna write per trial: these go with its result
            tally.attrs[trial.number] = attrs
            cfgs[trial.number] = cfg
            continue
        try:
            if ctx.tracker is not None and ctx.parent_run_id and tally.tracking_error is None:
                try:
                    with signals_held():  # a run created but not yet in run_ids could never be closed
                        tally.run_ids[trial.number] = attrs["mlflow_run_id"] = _start_run(ctx, trial.number, cfg)
                except Exception as exc:  # noqa: BLE001 - the store failed: compute anyway, write the run on resume
                    tally.tracking_error = exc
            set_user_attrs(trial, attrs)
        except UpdateFinishedTrialError:
            _drop(ctx, tally, trial)
            continue
        cfgs[trial.number] = cfg
    return cfgs


def _tell_and_record(
    ctx: TrialContext, live: Asked, outcomes: list, cfgs: dict[int, Any], seconds: float, tally: _Tally
) -> None:
    """Tell Optuna every computed result, then record their runs in MLflow (while MLflow works).
    The results' attributes go first, every trial's of the pass in one storage write, then
    their tells in another."""
    records = [
        optuna_record(cfgs[trial.number], result, seconds, ctx.spec, tally.attrs.get(trial.number))
        for (trial, _), (_, _, result) in zip(live, outcomes)
    ]
    for (trial, _), (_, metrics, _) in zip(live, records):
        if ATTR_ROUND in trial.user_attrs:  # sampler=adaptive: the round in MLflow too (n_prompts: the fidelity)
            metrics["adaptive_round"] = int(trial.user_attrs[ATTR_ROUND])
    refused = set_many_user_attrs([(trial, attrs) for (trial, _), (_, _, attrs) in zip(live, records)])
    tells = [  # a pruned trial is not a failed one: it keeps what it saw
        (trial, None, TrialState.PRUNED) if result.pruned else (trial, value, None)
        for (trial, _), (_, _, result), (value, _, _) in zip(live, outcomes, records)
        if trial.number not in refused
    ]
    with signals_held():  # the pass's results are told whole (one write) or not at all
        refused |= tell_many(ctx.study, tells)
    for (trial, _), (evaluator, _, result), (_, metrics, _) in zip(live, outcomes, records):
        if trial.number in refused:
            _drop(ctx, tally, trial)
            continue
        tally.pending.pop(trial.number, None)
        if ctx.tracker is None or not ctx.parent_run_id:
            continue
        if ctx.writer is not None:  # the writer process writes the whole run; this loop asks on
            ctx.writer.submit(
                _record_of(ctx, trial.number, cfgs[trial.number], evaluator, result, metrics, len(live), tally)
            )
            continue
        tally.told_unlogged.add(trial.number)
        run_id = tally.run_ids.get(trial.number)
        if run_id is None or tally.tracking_error is not None:
            tally.unrecorded.append(trial.number)
            continue
        try:
            record_in_mlflow(
                ctx.tracker, run_id, trial.number, cfgs[trial.number], evaluator, result, metrics, len(live)
            )
            tally.told_unlogged.discard(trial.number)
        except Exception as exc:  # noqa: BLE001 - the result is safe in Optuna; the run is written on resume
            tally.tracking_error = exc
            tally.unrecorded.append(trial.number)


def _record_of(
    ctx: TrialContext, number: int, cfg: Any, evaluator: Any, result: Any, metrics: dict, stacked: int, tally: _Tally
) -> TrialRecord:
    dataset = evaluator.dataset
    return TrialRecord(
        number=number,
        cfg=cfg,
        parent_run_id=ctx.parent_run_id,
        study_name=ctx.spec.study_name,
        tags=_run_tags(ctx),
        hook=result.hooks[0],
        dataset=(dataset.name, dataset.content_hash, len(dataset)),
        stacked=stacked,
        metrics=metrics,
        per_prompt=result.per_prompt,
        pruned=result.pruned,
        started_ms=tally.started_ms,
        ended_ms=int(time.time() * 1000),
    )


def _run_tags(ctx: TrialContext) -> dict[str, str]:
    tags = {TAG_SAMPLER: ctx.spec.sampler, TAG_SWEEP: ctx.spec.name, TAG_WORKER: str(ctx.worker)}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def writer_failed(ctx: TrialContext, writer: Any = None) -> TrackingError | None:
    """The writer's failure (or its end with runs pending) as one error, the inline path's;
    ``writer``: a closed one (default: the context's, polled now)."""
    writer = writer if writer is not None else ctx.writer
    if writer is None:
        return None
    writer.poll()
    if writer.failed:
        _, line = next(iter(writer.failed.items()))
        return _tracking_failed(ctx, sorted(writer.failed), RuntimeError(line))
    if writer.pending and not writer.alive():
        return _tracking_failed(ctx, sorted(writer.pending), RuntimeError("the MLflow writer process ended"))
    return None


def _start_run(ctx: TrialContext, number: int, cfg: Any = None) -> str:
    """The trial's MLflow run, named by its site (``L24 τ8.32 embed correct``); ``cfg`` is the
    trial's config (rebuilt from the asked trial's params when not given: cached, cheap)."""
    from ..tracking._schema import Site

    tags = _run_tags(ctx)
    site = None
    with contextlib.suppress(Exception):  # a name is a nicety: never cost the trial its run
        if cfg is None and number in ctx.owned:
            cfg = trial_config(ctx.spec.overrides, ctx.owned[number].params)
        site = Site.from_config(cfg).label if cfg is not None else None
    return ctx.tracker.start_trial(ctx.parent_run_id, number, ctx.spec.study_name, tags, site=site)


def fail_pending(
    ctx: TrialContext, pending: dict[int, optuna.Trial], run_ids: dict[int, str], exc: BaseException
) -> None:
    """Fail trials not yet told, in Optuna and (best effort) MLflow."""
    reason = f"{type(exc).__name__}: {first_line(exc)}"
    for number, trial in pending.items():
        with contextlib.suppress(Exception):  # the storage may be what failed
            trial.set_user_attr("failure", reason[:500])
        with contextlib.suppress(Exception):
            ctx.study.tell(trial, state=TrialState.FAIL)
        if ctx.tracker is not None and number in run_ids:
            ctx.tracker.fail(run_ids[number], reason)
