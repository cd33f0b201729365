"""Trial runs written off the worker's critical path: a writer process owns the MLflow client.

With ``tracking.writer=process`` (and ``auto``, the default, on a GPU) a worker tells Optuna a trial's result, hands
the trial's record (its config, metrics and per-prompt table, already computed) to its writer
process, and asks the next trial at once. The writer builds the run's params and artifacts
(the flattened config, ``per_prompt.csv``, ``config.yaml``, the optional figure) and writes
the whole run: created, filled and closed in one go, its start and end times the trial's. A
process, not a thread: a thread would hold the GIL against the forward passes.

What stays as it was on the inline path:

* Optuna is told first. A result lives in the study before its run is written, so a crash of
  the worker or the writer loses no result: the resume writes any missing run
  (:func:`meminject.runner._parent.reconcile_runs`), as after any tracking failure.
* The writer's failure (a full disk, a locked store) is reported back as one line; the worker
  stops as it did when MLflow failed inline, and nothing is lost.
* The writer ignores SIGINT: a Ctrl-C reaches the worker, which waits for the writer with a
  bound and says what is still pending (that is written on resume).

What differs: a trial's run appears when the trial is told, not when it starts, and a trial
that fails or goes stale has no MLflow run (its state and reason are in the study).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..core._errors import first_line, number_ranges

__all__ = ["TrialRecord", "RunWriter", "write_record"]

log = logging.getLogger("meminject")

_PARENT_CHECK_S = 1.0  # how often an idle writer checks that its worker still lives
_SAY_PENDING_AFTER_S = 5.0  # a worker's wait for its writer is said once it lasts this long


@dataclass
class TrialRecord:
    """Everything a trial's run holds, as computed by the worker (picklable)."""

    number: int
    cfg: Any  # the trial's RunConfig
    parent_run_id: str
    study_name: str
    tags: dict[str, str]
    hook: str
    dataset: tuple[str, str, int]  # name, content hash, size
    stacked: int
    metrics: dict[str, Any]
    per_prompt: Any  # the per-prompt DataFrame
    pruned: bool
    started_ms: int
    ended_ms: int


def write_record(tracker: Any, record: TrialRecord) -> str:
    """Create, fill and close the trial's run (in the writer, or inline on the old path)."""
    from ..config._compose import to_yaml
    from ..core._redaction import redacted_container
    from ..tracking._schema import TAG_STATE, Site
    from ._record import trial_figure_artifact, trial_params_of

    shown = redacted_container(record.cfg)
    site = Site.from_config(record.cfg).label
    run_id = tracker.start_trial(
        record.parent_run_id, record.number, record.study_name, record.tags, site=site, started_ms=record.started_ms
    )
    params = trial_params_of(record.cfg, shown, record.hook, record.dataset, record.stacked)
    artifacts: dict[str, Any] = {
        "per_prompt.csv": record.per_prompt.to_csv(index=False),
        "config.yaml": to_yaml(shown),
    }
    with trial_figure_artifact(record.cfg, record.per_prompt, f"trial {record.number}: {site}") as figure:
        if figure is not None:
            artifacts["per_prompt_gains.png"] = figure
        tracker.finish_trial(run_id, params, record.metrics, artifacts, terminate=False)
    if record.pruned:  # MLflow has no PRUNED status: the run finishes, tagged with its state
        tracker.client.set_tag(run_id, TAG_STATE, "PRUNED")
    tracker.client.set_terminated(run_id, "FINISHED", end_time=record.ended_ms)
    return run_id


def _exit_with(parent: int) -> None:
    """The writer's watchdog: end this process at once when its worker is gone. The worker may
    have died mid-way through handing over a record, leaving a read blocked forever on a pipe
    that this process itself holds open; and a writer must never write beside the resume,
    which writes every missing run (a run cut short here is completed then)."""
    while True:
        time.sleep(_PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(0)


def _serve(uri: str, experiment: str, experiment_id: str, retry_s: float, jobs: Any, done: Any, parent: int) -> None:
    """The writer process: write each record, report ("ok", n, "", cpu) or ("error", n, line, cpu),
    ``cpu`` being the CPU seconds this process has spent since it began serving (its imports and
    store connection left out): what benchmarks/trial_overhead.py adds to the worker's own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when to stop; its Ctrl-C is not ours
    # ``parent``: the worker's pid, given by the worker (it may die before this process is up)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="meminject-writer-watchdog").start()
    try:
        import mlflow  # noqa: F401 - its import configures its own loggers: quiet them after it

        from ..tracking._tracker import Tracker

        for name in ("mlflow", "alembic", "sqlalchemy", "urllib3", "httpx"):  # after MLflow's import sets its own
            # errors too: each failure goes back to the worker, which says it in one line
            logging.getLogger(name).setLevel(logging.CRITICAL)
        tracker = Tracker(uri, experiment, retry_s)
        tracker.experiment_id = experiment_id  # the study's (a study of an older meminject keeps its own)
    except BaseException as exc:  # noqa: BLE001 - reported, then every record is refused
        tracker, failure = None, first_line(exc)
    else:
        failure = None
    serving = time.process_time()
    while True:
        try:
            record = jobs.get(timeout=_PARENT_CHECK_S)
        except queue.Empty:
            continue  # an orphaned writer is ended by its watchdog
        if record is None:
            return
        if os.getppid() != parent:  # the worker died: the resume writes this run; two writers must not
            return
        if failure is not None:
            done.put(("error", record.number, failure, time.process_time() - serving))
            continue
        try:
            write_record(tracker, record)
        except BaseException as exc:  # noqa: BLE001 - one line back; the rest is refused, written on resume
            failure = first_line(exc)
            done.put(("error", record.number, failure, time.process_time() - serving))
            continue
        done.put(("ok", record.number, "", time.process_time() - serving))


class RunWriter:
    """The worker's side: hand records over, collect what was written, wait for it at the end."""

    def __init__(self, tracker: Any) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process with torch's threads
        self._jobs = context.Queue()
        self._done = context.Queue()
        self.pending: set[int] = set()
        self.failed: dict[int, str] = {}
        self.cpu_s = 0.0  # the writer's CPU seconds spent serving, as last reported
        self._process = context.Process(
            target=_serve,
            args=(
                tracker.uri,
                tracker.experiment,
                tracker.experiment_id,
                tracker.retry_s,
                self._jobs,
                self._done,
                os.getpid(),
            ),
            daemon=True,
            name="meminject-writer",
        )
        # SIGINT ignored from its first instant (an ignored signal stays ignored across exec): a
        # terminal's Ctrl-C reaches the whole process group, and this one is still importing
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._process.start()
        finally:
            signal.signal(signal.SIGINT, previous)

    def submit(self, record: TrialRecord) -> None:
        self.pending.add(record.number)
        self._jobs.put(record)

    def poll(self, timeout: float = 0.0) -> None:
        """Collect the writer's reports (waiting up to ``timeout`` for the first)."""
        block = timeout > 0
        while True:
            try:
                kind, number, line, cpu_s = self._done.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                return
            block = False
            self.cpu_s = max(self.cpu_s, cpu_s)
            self.pending.discard(number)
            if kind == "error":
                self.failed[number] = line

    def alive(self) -> bool:
        return self._process.is_alive()

    def close(self, timeout: float = 60.0, *, say: bool = True) -> list[int]:
        """Wait (up to ``timeout`` s) for the pending records, stop the writer; returns the trial
        numbers whose runs were not written (the resume writes them)."""
        started = time.monotonic()
        deadline = started + timeout
        told = False
        if self._process.is_alive():
            self._jobs.put(None)
        while self.pending and time.monotonic() < deadline and self._process.is_alive():
            if say and not told and time.monotonic() > started + _SAY_PENDING_AFTER_S:
                log.warning("waiting for the MLflow writer: %d trial run(s) pending", len(self.pending))
                told = True
            self.poll(timeout=0.2)
        self.poll()
        self._process.join(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5.0)
        left = sorted(self.pending | set(self.failed))
        self._jobs.close()
        self._jobs.cancel_join_thread()  # records the writer never read must not hold this process
        if left and say and not self.failed:  # a failure is reported once, by the worker
            log.warning(
                "%d trial run(s) not written to MLflow yet (trials %s): they are in the study; rerun the same command to write them",
                len(left),
                number_ranges(left),
            )
        return left
