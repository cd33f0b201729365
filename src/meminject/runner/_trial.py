"""One trial's computation: its config, and the per-worker cache of models and evaluators.

A worker keeps models, datasets and :class:`~meminject.evaluation.Evaluator` objects (with
their clean pass and prefix cache) across trials, so a trial costs only its injected pass.
An out-of-memory error halves the batch budget for what follows instead of ending the worker.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from typing import Any, Sequence

from ..config import RunConfig, load_run_config, needs_compose, with_values
from ..core._errors import MemInjectError
from ..engine._models import resolve_depth

__all__ = ["trial_config", "TrialRunner", "is_out_of_memory"]

log = logging.getLogger("meminject")


def trial_config(overrides: Sequence[str], params: dict[str, Any]) -> RunConfig:
    """The config of one trial: the sweep's fixed overrides plus the trial's sampled values.

    The fixed part is composed once per process (:func:`load_run_config`); the sampled
    injection and memory leaves are set on it as typed values, checked as when built. A group
    choice (``model=...``) or another key takes a compose of its own, also once per distinct
    value. Both give the same config (tested). A relative depth (``injection.depth``) is
    resolved to the trial model's layer here, so everything downstream sees the layer that ran.
    """
    if needs_compose(list(params)):
        composed = {k: v for k, v in params.items() if needs_compose([k])}
        base = load_run_config([*overrides, *(f"{k}={v}" for k, v in composed.items())])
        return resolve_depth(with_values(base, {k: v for k, v in params.items() if k not in composed}))
    return resolve_depth(with_values(load_run_config(overrides), params))


class TrialRunner:
    """Per worker: models, datasets and evaluators loaded once and reused by every trial."""

    def __init__(self, chunks: int = 1, stack_chunks: bool = False, first_chunk: int = 0) -> None:
        self.chunks = int(chunks)  # prompt chunks per trial (pruned sweeps), see Evaluator
        self.first_chunk = int(first_chunk)  # pruner=halving: geometric chunks from this many prompts
        self.stack_chunks = bool(stack_chunks)  # a pruned grid: stack its chunked trials on a CPU too
        self._evaluators: dict[tuple, Any] = {}
        self._datasets: dict[Any, Any] = {}
        self._resident: dict[Any, int] = {}  # ModelConfig -> bytes, least recently used first
        self.swaps: list[str] = []  # the swap-out lines said, in order
        self.batch_scale = 1.0  # halved after each out-of-memory error

    def evaluator(self, cfg: RunConfig):
        """The evaluator of a trial's (model, data, perf, metric, top_k, seed): keyed by those
        settings themselves (frozen dataclasses), so equal settings share one clean pass."""
        from ..data._dataset import load_dataset
        from ..engine._evaluation import Evaluator

        if self.batch_scale < 1.0:  # after an OOM: smaller batches and cache, one trial per pass
            perf = cfg.perf
            cfg = dataclasses.replace(
                cfg,
                perf=dataclasses.replace(
                    perf,
                    max_batch_tokens=max(1, int(perf.max_batch_tokens * self.batch_scale)),
                    prefix_cache_mb=perf.prefix_cache_mb * self.batch_scale,
                    trials_per_forward=1,
                ),
            )
        if cfg.data not in self._datasets:
            self._datasets[cfg.data] = load_dataset(cfg.data)
        # metric.specific is asked per evaluation (the shuffled copy rides in the same pass): not a key
        key = (cfg.model, cfg.data, cfg.perf, cfg.top_k, dataclasses.replace(cfg.metric, specific=False), cfg.seed)
        if key not in self._evaluators:
            model = self._load(cfg.model, cfg.perf.models_mb)
            self._evaluators[key] = Evaluator.from_config(
                model,
                self._datasets[cfg.data],
                cfg,
                chunks=self.chunks,
                stack_chunks=self.stack_chunks,
                first_chunk=self.first_chunk,
            )
        self._resident[cfg.model] = self._resident.pop(cfg.model, 0)  # the most recently used, last
        return self._evaluators[key]

    def _load(self, model_cfg: Any, budget_mb: float) -> Any:
        """The model of a trial, loaded within ``perf.models_mb``: a model axis keeps every model
        that fits (so a TPE study alternating models loads each once) and swaps out the least
        recently used others, saying so. The budget is checked once the new model's size is known."""
        from ..engine._models import load_model, model_bytes

        model = load_model(model_cfg)
        self._resident[model_cfg] = model_bytes(model)
        budget = budget_mb * 2**20
        while len(self._resident) > 1 and sum(self._resident.values()) > budget:
            old = next(iter(self._resident))
            self._swap_out(old, model_cfg, budget_mb)
        return model

    def _swap_out(self, old: Any, new: Any, budget_mb: float) -> None:
        from ..engine._models import unload_model

        size = self._resident.pop(old)
        for key in [k for k in self._evaluators if k[0] == old]:
            del self._evaluators[key]  # its clean passes and prefix caches go with it
        unload_model(old)
        gc.collect()
        line = (
            f"swapping out model {old.name} ({size / 2**20:.0f} MB) to load {new.name}: both do not fit "
            f"perf.models_mb={budget_mb:g} (raise it to keep both; a model that comes back is loaded and its clean pass run again)"
        )
        self.swaps.append(line)
        log.warning("%s", line)

    def run(self, cfg: Any):
        return self.run_many([cfg])[0]

    def run_many(self, cfgs: list[Any], monitors: list[Any] | None = None) -> list[tuple[Any, Any, Any]]:
        """Evaluate several trial configs; those sharing an evaluator share stacked passes.
        ``monitors[i]`` may stop config i between prompt chunks (see ``Evaluator.evaluate_many``).
        Returns (evaluator, injection spec, result) per config, in order."""
        monitors = list(monitors) if monitors is not None else [None] * len(cfgs)
        from ..engine._evaluation import InjectionSpec

        items = []
        for cfg in cfgs:
            evaluator = self.evaluator(cfg)
            spec = InjectionSpec.from_config(cfg)
            spec.validate(evaluator.model)
            items.append((evaluator, spec, cfg))
        results: list[Any] = [None] * len(items)
        by_evaluator: dict[tuple[int, bool], list[int]] = {}
        for i, (evaluator, _, cfg) in enumerate(items):
            by_evaluator.setdefault((id(evaluator), cfg.metric.specific), []).append(i)
        for (_, specific), indices in by_evaluator.items():
            evaluator = items[indices[0]][0]
            points = [(items[i][1], items[i][2].memory) for i in indices]
            done = evaluator.evaluate_many(points, [monitors[i] for i in indices], specific=specific)
            for i, result in zip(indices, done):
                results[i] = result
        return [(evaluator, spec, result) for (evaluator, spec, _), result in zip(items, results)]

    def trials_per_forward(self, cfg: Any) -> int:
        return self.evaluator(cfg).trials_per_forward

    def shrink_after_oom(self) -> float:
        """Free the device memory held by evaluators and halve the batch budget for what follows."""
        import torch

        self._evaluators.clear()
        self._resident.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.batch_scale /= 2
        if self.batch_scale < 1 / 64:
            raise MemInjectError(
                "out of memory even with 1/64 of perf.max_batch_tokens; use a smaller model or a larger device"
            )
        return self.batch_scale


def is_out_of_memory(exc: BaseException) -> bool:
    """A device out-of-memory error (CUDA's, or the allocator's message on other backends)."""
    import torch

    oom_type = getattr(torch.cuda, "OutOfMemoryError", None) or getattr(torch, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(exc, oom_type)) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )
