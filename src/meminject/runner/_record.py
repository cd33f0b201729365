"""Recording a trial: its site and summary in Optuna, everything in its MLflow run.

Every trial run carries the whole resolved config, flattened (``injection.scale``,
``metric.answer``, ``memory.draw``, ``data.split``, …), its site record, the hook it
touched, the dataset's hash, the per-prompt table, the config (and, with tracking.trial_figures, a per-prompt gain chart).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from ..config._compose import flat_config, to_yaml
from ..engine._memories import word_source
from ..tracking._schema import Site
from ..core._redaction import redacted_container
from ..config import RunConfig
from ..tracking._schema import ATTR_KEY, ATTR_PROMPT_VALUES, TAG_STATE
from ..search._pruning import complete_values

__all__ = [
    "trial_params",
    "trial_params_of",
    "trial_figure_artifact",
    "optuna_record",
    "record_in_mlflow",
    "reconciled_params",
    "resident_mb",
    "ATTR_KEY",
]

log = logging.getLogger("meminject")


def _config_and_site(cfg: RunConfig, shown: dict[str, Any]) -> dict[str, Any]:
    """The flattened config as shown (redacted), and the site record's other columns (where a
    column is a config key, the config's value stands: memory.pos is "-" in the record of a
    memory type that ignores it, but the config still says what it was)."""
    return {**Site.from_config(cfg).record(), **flat_config(shown)}


def trial_params(cfg: RunConfig, *, hook: str, dataset: Any, stacked: int, shown: Any = None) -> dict[str, Any]:
    """A trial run's MLflow params: the resolved config (redacted: ``shown``), the site, and what ran."""
    described = (dataset.name, dataset.content_hash, len(dataset))
    return trial_params_of(cfg, redacted_container(cfg) if shown is None else shown, hook, described, stacked)


def trial_params_of(
    cfg: RunConfig, shown: Any, hook: str, dataset: tuple[str, str, int], stacked: int
) -> dict[str, Any]:
    """:func:`trial_params` from the dataset's (name, hash, size): what the writer process gets."""
    name, content_hash, size = dataset
    return {
        **_config_and_site(cfg, shown),
        "hook": hook,
        "dataset": name,
        "dataset_hash": content_hash,
        "n_prompts": size,
        "trials_per_forward": stacked,
        "memory.word_source": word_source(cfg.memory),
    }


def optuna_record(
    cfg: Any, result: Any, seconds: float, spec: Any, extra: dict[str, Any] | None = None
) -> tuple[float | list[float], dict[str, Any], dict[str, Any]]:
    """A trial's summary, time, memory and site as the Optuna user attributes to store before it
    is told: (the objective value, or values of a multi-objective study; the metrics to log; the
    attributes).

    A pruned trial's summary covers only the prompts it saw: it is stored and logged as
    ``partial_<name>``, so no table or chart can mistake it for a full trial's value.
    """
    summary = dict(result.summary)
    if result.pruned:
        summary = {(name if name == "n_prompts" else f"partial_{name}"): value for name, value in summary.items()}
    summary["n_prompts"] = result.n_prompts
    attrs = dict(summary)
    if spec.pruner != "none" and not result.pruned:  # later trials are compared with it, prompt by prompt
        attrs[ATTR_PROMPT_VALUES] = complete_values(spec.objective, result.per_prompt)
    attrs["trial_seconds"] = seconds
    _release_freed_memory()
    rss = resident_mb()
    if rss is not None:  # the worker's memory after each trial: a per-trial leak shows as a slope
        attrs["worker_rss_mb"] = summary["worker_rss_mb"] = rss
    attrs.update(Site.from_config(cfg).attrs())
    attrs.update(extra or {})  # the trial key and worker, when not written at its start
    if result.pruned:
        return float(summary[f"partial_{spec.objective}"]), {**summary, "trial_seconds": seconds}, attrs
    values = [float(summary[name]) for name in spec.all_objectives()]
    return (values if spec.multi else values[0]), {**summary, "trial_seconds": seconds}, attrs


def record_in_mlflow(
    tracker: Any,
    run_id: str,
    trial_number: int,
    cfg: Any,
    evaluator: Any,
    result: Any,
    metrics: dict[str, Any],
    stacked: int,
) -> None:
    """The trial's run on the inline path (``tracking.writer=inline``): params (the whole
    config), metrics, per-prompt table, config, figure. The writer process writes the same
    run in one go (:func:`meminject.runner._writer.write_record`)."""
    shown = redacted_container(cfg)  # once: the params and config.yaml show the same redacted config
    params = trial_params(cfg, hook=result.hooks[0], dataset=evaluator.dataset, stacked=stacked, shown=shown)
    artifacts: dict[str, Any] = {"per_prompt.csv": result.per_prompt.to_csv(index=False), "config.yaml": to_yaml(shown)}
    title = f"trial {trial_number}: {Site.from_config(cfg).label}"
    with trial_figure_artifact(cfg, result.per_prompt, title) as figure:
        if figure is not None:
            artifacts["per_prompt_gains.png"] = figure
        tracker.finish_trial(run_id, params, metrics, artifacts, terminate=not result.pruned)
    if result.pruned:  # MLflow has no PRUNED status: the run finishes, tagged with its state
        tracker.client.set_tag(run_id, TAG_STATE, "PRUNED")
        tracker.finish(run_id, "FINISHED")


@contextlib.contextmanager
def trial_figure_artifact(cfg: Any, per_prompt: Any, title: str) -> Iterator[Path | None]:
    """With ``tracking.trial_figures``, the trial's per-prompt gain chart, in a temporary
    folder while the block runs (no folder per trial when figures are off)."""
    if not cfg.tracking.trial_figures:
        yield None
        return
    with tempfile.TemporaryDirectory() as folder:
        yield _trial_figure(per_prompt, Path(folder) / "per_prompt_gains.png", title)


def reconciled_params(cfg: RunConfig) -> dict[str, Any]:
    """The params of a trial run written after the fact (from the study alone, on resume): the
    same columns as a live trial's (the dataset, its hash and size included), less what only
    the run itself knew (how many trials shared its forward pass)."""
    dataset = _dataset(cfg.data)
    return {
        **_config_and_site(cfg, redacted_container(cfg)),
        "hook": cfg.point.hook_name,
        "dataset": dataset.name,
        "dataset_hash": dataset.content_hash,
        "n_prompts": len(dataset),
        "memory.word_source": word_source(cfg.memory),
    }


@functools.lru_cache(maxsize=8)
def _dataset(data_cfg: Any) -> Any:
    from ..data._dataset import load_dataset

    return load_dataset(data_cfg)


_MALLOC_TRIM: Any = None
_TRIM_EVERY_S = 60.0  # at most this often: a trim walks the heap, 14-22 ms in a SmolLM2 worker (1.4 ms a trial
# at 16 trials per forward when it ran every 5 s); the climb it stops is over thousands of trials
_last_trim = time.monotonic()  # the first trim a minute after import: a worker's start leaves little to hand back


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after the figure's and the
    tracker's large short-lived buffers, which reads as a slow climb over thousands of trials),
    at most every few seconds: the climb is over thousands of trials, and a trim walks the whole
    heap."""
    global _MALLOC_TRIM, _last_trim
    if time.monotonic() - _last_trim < _TRIM_EVERY_S:
        return
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)
    _last_trim = time.monotonic()


def resident_mb() -> float | None:
    """This process's resident memory in MiB (Linux /proc; psutil elsewhere; None if neither)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # noqa: BLE001
        return None


def _trial_figure(per_prompt: Any, path: Path, title: str) -> Path | None:
    """The trial's sorted per-prompt gains as a PNG (never fails the trial)."""
    from ..views._figures import per_prompt_gains

    try:
        return per_prompt_gains(per_prompt, path, title)
    except Exception as exc:  # noqa: BLE001
        log.debug("trial figure skipped: %s", exc)
        return None
