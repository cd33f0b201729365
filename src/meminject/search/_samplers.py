"""Samplers of our own: Optuna's TPE with a bounded memory, so a long study stays cheap."""

from __future__ import annotations

import bisect
import heapq
from typing import Any

import optuna
from optuna.trial import TrialState

from ..store._optuna import bounded_view

__all__ = ["BoundedTPESampler"]


class BoundedTPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE, conditioned on at most ``best + recent`` past trials: the ``best`` complete
    trials (TPE's "good" group is the top min(10%, 25) of them, so ``best=25`` keeps that group
    whole) and the ``recent`` latest trials (finished, or running: TPE's constant liar). Up to
    ``best + recent`` trials it is TPE itself, suggestion for suggestion (tested); beyond, TPE's
    own work per trial stops growing with the study (``benchmarks/sampler_cost.py``).
    Single-objective only (a multi-objective study is passed whole).

    TPE reads past trials through a private method; the sampler passes it the study's
    :func:`~meminject.store._optuna.bounded_view` (the adapter's), which answers with the
    bounded set. The best trials live in a heap fed only with the trials that finished since the
    last look (found by bisecting the trial list, which is in number order), so a suggestion
    costs the same at trial 5,000 as at trial 300, apart from Optuna's own reads of the storage.
    """

    def __init__(self, *, best: int = 25, recent: int = 225, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.best, self.recent = int(best), int(recent)
        self._heap: list[tuple[float, int]] = []  # the best complete trials: (value, number), worst first
        self._newest = -1  # the highest trial number looked at
        self._running: set[int] = set()  # trials looked at before they finished: looked at again

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return super().sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return super().sample_independent(self._view(study), trial, param_name, param_distribution)

    def _view(self, study: optuna.Study) -> Any:
        return bounded_view(study, self.bounded, self.best + self.recent)

    def bounded(self, trials: list[Any], states: Any, minimize: bool) -> list[Any]:
        """The trials TPE sees, in number order: the best complete ones and the latest ``recent``."""
        self._look(trials, states, -1.0 if minimize else 1.0)
        tail = trials[-self.recent :]
        first = tail[0].number if tail else 0
        top = [t for n in sorted(n for _, n in self._heap if n < first) if (t := _find(trials, n)) is not None]
        return top + tail

    def _look(self, trials: list[Any], states: Any, sign: float) -> None:
        """Feed the heap with the complete trials it has not seen: those numbered after the last
        look, and those not yet complete then (running, or missing from that look's states)."""
        fresh = trials[bisect.bisect_right(trials, self._newest, key=_number) :]
        previous = self._newest
        for t in fresh:  # numbers skipped here are in other states (running, waiting, failed): look again later
            self._running.update(range(previous + 1, t.number))
            previous = t.number
        lists_running = states is None or TrialState.RUNNING in states
        for number in list(self._running):
            t = _find(trials, number)
            if t is not None:
                fresh.append(t)
            elif lists_running:  # not running, not complete: failed or given back, never complete
                self._running.discard(number)
        for t in fresh:
            self._running.discard(t.number)
            if t.state == TrialState.COMPLETE:
                item = (sign * t.value, t.number)
                if len(self._heap) < self.best:
                    heapq.heappush(self._heap, item)
                elif item > self._heap[0]:
                    heapq.heapreplace(self._heap, item)
            elif not t.state.is_finished():
                self._running.add(t.number)
        if trials:
            self._newest = max(self._newest, trials[-1].number)


def _number(trial: Any) -> int:
    return trial.number


def _find(trials: list[Any], number: int) -> Any:
    """The trial of that number in a number-ordered list, or None (not in these states)."""
    i = bisect.bisect_left(trials, number, key=_number)
    return trials[i] if i < len(trials) and trials[i].number == number else None
