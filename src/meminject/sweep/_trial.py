"""One trial's computation: its config, and the per-worker cache of models and evaluators.

A worker keeps models, datasets and :class:`~meminject.evaluation.Evaluator` objects (with
their clean pass and prefix cache) across trials, so a trial costs only its injected pass.
An out-of-memory error halves the batch budget for what follows instead of ending the worker.
"""

from __future__ import annotations

import copy
import gc
from typing import Any, Sequence

from omegaconf import OmegaConf

from ..config import compose_config, to_yaml
from ..errors import MemInjectError

__all__ = ["trial_config", "TrialRunner", "is_out_of_memory"]

_BASE_CONFIGS: dict[tuple[str, ...], Any] = {}
_FAST_KEYS = ("injection.", "memory.")  # leaf keys no interpolation in conf/ reads


def trial_config(overrides: Sequence[str], params: dict[str, Any]) -> Any:
    """The config of one trial: the sweep's fixed overrides plus the trial's sampled values.

    A Hydra compose costs ~0.2 s, more than a whole trial of a small model; a worker composes
    the base once and sets the sampled injection/memory leaves on a copy (what the override
    would do: no interpolation reads them). Group choices (``model=...``) and other keys take
    the full compose. Both give the same config (tested).
    """
    full = [*overrides, *(f"{k}={v}" for k, v in params.items())]
    if not all(k.startswith(_FAST_KEYS) for k in params):
        return compose_config(full)
    key = tuple(overrides)
    if key not in _BASE_CONFIGS:
        if len(_BASE_CONFIGS) > 16:
            _BASE_CONFIGS.clear()
        _BASE_CONFIGS[key] = compose_config(list(overrides))
    cfg = copy.deepcopy(_BASE_CONFIGS[key])
    try:
        for name, value in params.items():
            OmegaConf.update(cfg, name, value, merge=False)
    except Exception:  # noqa: BLE001 - an unknown key: let the compose say it properly
        return compose_config(full)
    return cfg


class TrialRunner:
    """Per worker: models, datasets and evaluators loaded once and reused by every trial."""

    def __init__(self, chunks: int = 1, stack_chunks: bool = False) -> None:
        self.chunks = int(chunks)  # prompt chunks per trial (pruned sweeps), see Evaluator
        self.stack_chunks = bool(stack_chunks)  # a pruned grid: stack its chunked trials on a CPU too
        self._evaluators: dict[str, Any] = {}
        self._datasets: dict[str, Any] = {}
        self.batch_scale = 1.0  # halved after each out-of-memory error

    def evaluator(self, cfg: Any):
        from ..data import load_dataset
        from ..evaluation import Evaluator
        from ..models import load_model

        if self.batch_scale < 1.0:  # after an OOM: smaller batches and cache, one trial per pass
            cfg = copy.deepcopy(cfg)
            cfg.perf.max_batch_tokens = max(1, int(int(cfg.perf.max_batch_tokens) * self.batch_scale))
            cfg.perf.prefix_cache_mb = float(cfg.perf.prefix_cache_mb) * self.batch_scale
            cfg.perf.trials_per_forward = 1
        data_key = to_yaml(cfg.data)
        if data_key not in self._datasets:
            self._datasets[data_key] = load_dataset(cfg.data)
        key = to_yaml(cfg.model) + data_key + to_yaml(cfg.perf) + str(cfg.top_k) + to_yaml(cfg.metric)
        if key not in self._evaluators:
            self._evaluators[key] = Evaluator.from_config(load_model(cfg.model), self._datasets[data_key], cfg, chunks=self.chunks, stack_chunks=self.stack_chunks)
        return self._evaluators[key]

    def run(self, cfg: Any):
        return self.run_many([cfg])[0]

    def run_many(self, cfgs: list[Any], monitors: list[Any] | None = None) -> list[tuple[Any, Any, Any]]:
        """Evaluate several trial configs; those sharing an evaluator share stacked passes.
        ``monitors[i]`` may stop config i between prompt chunks (see ``Evaluator.evaluate_many``).
        Returns (evaluator, injection spec, result) per config, in order."""
        monitors = list(monitors) if monitors is not None else [None] * len(cfgs)
        from ..evaluation import InjectionSpec

        items = []
        for cfg in cfgs:
            evaluator = self.evaluator(cfg)
            spec = InjectionSpec.from_config(cfg)
            spec.validate(evaluator.model)
            items.append((evaluator, spec, cfg))
        results: list[Any] = [None] * len(items)
        by_evaluator: dict[int, list[int]] = {}
        for i, (evaluator, _, _) in enumerate(items):
            by_evaluator.setdefault(id(evaluator), []).append(i)
        for indices in by_evaluator.values():
            evaluator = items[indices[0]][0]
            points = [(items[i][1], items[i][2].memory) for i in indices]
            for i, result in zip(indices, evaluator.evaluate_many(points, [monitors[i] for i in indices])):
                results[i] = result
        return [(evaluator, spec, result) for (evaluator, spec, _), result in zip(items, results)]

    def trials_per_forward(self, cfg: Any) -> int:
        return self.evaluator(cfg).trials_per_forward

    def shrink_after_oom(self) -> float:
        """Free the device memory held by evaluators and halve the batch budget for what follows."""
        import torch

        self._evaluators.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.batch_scale /= 2
        if self.batch_scale < 1 / 64:
            raise MemInjectError("out of memory even with 1/64 of perf.max_batch_tokens; use a smaller model or a larger device")
        return self.batch_scale


def is_out_of_memory(exc: BaseException) -> bool:
    """A device out-of-memory error (CUDA's, or the allocator's message on other backends)."""
    import torch

    oom_type = getattr(torch.cuda, "OutOfMemoryError", None) or getattr(torch, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(exc, oom_type)) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())
