"""MLflow writes of told trials, on one background thread, in order.

A trial's run (~100 params, its metrics, the per-prompt table, the config, and the figure when
``tracking.trial_figures``) takes ~30 ms to write to SQLite: 4% of a 0.75 s SmolLM2 trial on a
CPU, and all of a GPU trial. The result is already safe in Optuna when the run is written, so
the worker hands the write to this thread and computes the next trial meanwhile
(benchmarks/trial_overhead.py measures both ways).

Writes are held until :meth:`TrackingWriter.release`, which the worker calls as the next
forward passes start: the writes are Python (SQLAlchemy) and hold the GIL, so started at once
they would slow the worker's own Python bookkeeping (ask, the next run's creation) instead of
overlapping the forward passes, which release it.

A failed write is reported at the next :meth:`TrackingWriter.check` (the worker then
stops with one line and the run is written on resume, as for a synchronous failure);
:meth:`TrackingWriter.drain` waits for every queued write (the worker calls it before it
returns, before it marks runs KILLED, and before anything reads the runs back).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

__all__ = ["TrackingWriter"]


class TrackingWriter:
    """Queued MLflow writes, each keyed by its trial number."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meminject-mlflow")
        self._pending: list[tuple[int, Future]] = []
        self._held: list[tuple[int, Callable[[], None]]] = []
        self._lock = threading.Lock()

    def submit(self, trial_number: int, write: Callable[[], None]) -> None:
        """Queue a write; it starts at the next :meth:`release` (or :meth:`drain`)."""
        with self._lock:
            self._held.append((trial_number, write))

    def release(self) -> None:
        """Start the held writes, in order (call it as the forward passes start)."""
        with self._lock:
            held, self._held = self._held, []
            self._pending += [(number, self._pool.submit(write)) for number, write in held]

    def check(self) -> tuple[list[int], BaseException | None]:
        """Trials whose write has failed so far, and the first error (writes still running are
        left queued)."""
        _, failed, error = self._settle(wait=False)
        return failed, error

    def drain(self) -> tuple[set[int], list[int], BaseException | None]:
        """Start and wait for every queued write: (trials written, trials whose write failed, the first error)."""
        self.release()
        return self._settle(wait=True)

    def _settle(self, wait: bool) -> tuple[set[int], list[int], BaseException | None]:
        with self._lock:
            pending = list(self._pending)
        written, failed, first, still = set(), [], None, []
        for number, future in pending:
            if not wait and not future.done():
                still.append((number, future))
                continue
            error = future.exception()  # waits when not done
            if error is None:
                written.add(number)
            else:
                failed.append(number)
                first = first or error
        with self._lock:
            done = {id(f) for _, f in pending} - {id(f) for _, f in still}
            self._pending = [(n, f) for n, f in self._pending if id(f) not in done]
        return written, failed, first

    def close(self) -> None:
        self._pool.shutdown(wait=True)
