"""Sweeps: Optuna studies over Hydra search spaces, run by worker processes, tracked in MLflow.

A sweep preset (``sweeps/NAME.yaml``) names a sampler, a trial budget, fixed config
overrides and the searched axes (see :mod:`meminject.space`). ``meminject sweep`` creates
or resumes the study, records everything a worker needs in the study itself, creates the
MLflow parent run, and runs workers: in-process (``workers=1``) or as N processes on the
same storage (Optuna's own distributed engine). ``meminject worker`` joins a study from
any shell or machine that reaches its storage.

Grid sweeps enqueue every (canonical) point once; workers pop queued trials atomically,
so no point runs twice, whatever the number of workers. TPE/random sweeps share a global
budget of ``n_trials`` complete trials.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import optuna
import optuna.distributions as od
from optuna.trial import TrialState
from omegaconf import OmegaConf

from .config import compose_config, to_yaml
from .evaluation import InjectionSpec
from .errors import ConfigError, MemInjectError
from .memories import word_source
from .recovery import DEFAULT_HEARTBEAT, HeartbeatJournalStorage, StaleTrialRecovery, heartbeats, recover_stale_trials
from .paths import mlruns_dir, sweeps_dir
from .space import SearchSpace, parse_space
from .tracking import Tracker, git_commit, redact, redacted_config, tracking_uri

__all__ = ["SweepSpec", "load_sweep", "prepare_study", "run_worker", "ranked_sites", "cmd_sweep", "cmd_worker", "cmd_best"]

log = logging.getLogger("meminject")

SWEEP_KEYS = ("sweep", "workers", "n_trials", "study", "storage", "sampler", "timeout", "heartbeat", "grace")
ATTR_HEARTBEAT = "meminject.heartbeat"  # [interval, grace] seconds, for every worker of the study
SAMPLERS = ("grid", "tpe", "random")
ATTR_SPEC = "meminject.sweep"
ATTR_PARENT = "meminject.mlflow_parent_run_id"
ATTR_KEY = "meminject.key"
ATTR_SURPLUS = "meminject.surplus"
SITE_KEYS = ("model", "weights", "injection.layer", "injection.head", "injection.site", "injection.positions", "injection.scale", "injection.tweak", "memory.type", "memory.encoding")


@dataclass
class SweepSpec:
    """Everything that defines a sweep; stored in the study so any worker can rebuild it."""

    name: str
    sampler: str
    n_trials: int | None
    seed: int
    overrides: list[str]            # fixed config overrides (preset's, then the command line's)
    params: dict[str, str]          # searched axes: config key -> grammar expression
    study_name: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SweepSpec":
        return cls(**json.loads(text))


# --------------------------------------------------------------------------- parsing


def _split_args(args: Sequence[str]) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """Split ``key=value`` args into sweep settings, fixed overrides and searched axes."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    settings, overrides, axes = {}, [], {}
    parser = OverridesParser.create()
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"bad argument {arg!r}: expected key=value")
        key, value = arg.split("=", 1)
        if key in SWEEP_KEYS:
            settings[key] = value
            continue
        if key.startswith(("injection.", "memory.")) and value.strip() == "all" or "(" in value and value.split("(", 1)[0].strip() in ("choice", "range", "interval", "int", "tag", "float"):
            axes[key] = value
            continue
        if key == "model" and "," in value:
            axes[key] = f"choice({value})"
            continue
        try:
            parser.parse_overrides([arg])
        except HydraException as exc:
            raise ConfigError(f"bad override {arg!r}: {str(exc).splitlines()[0]}") from exc
        overrides.append(arg)
    return settings, overrides, axes


def _as_positive_int(value: Any, key: str) -> int:
    try:
        number = int(str(value))
    except ValueError as exc:
        raise ConfigError(f"{key}={value!r} must be a positive integer") from exc
    if number < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer")
    return number


def _as_non_negative_int(value: Any, key: str) -> int:
    return 0 if str(value).strip() == "0" else _as_positive_int(value, key)


def load_sweep(args: Sequence[str]) -> tuple[SweepSpec, dict[str, str]]:
    """Read ``sweeps/NAME.yaml`` and apply the command line; returns (spec, settings)."""
    settings, cli_overrides, cli_axes = _split_args(args)
    name = settings.get("sweep", "smoke")
    path = sweeps_dir() / f"{name}.yaml"
    if not path.is_file():
        options = ", ".join(sorted(p.stem for p in sweeps_dir().glob("*.yaml")))
        raise ConfigError(f"unknown sweep {name!r}; choose from: {options}")
    preset = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    known = {"sampler", "n_trials", "seed", "config", "params", "study"}
    unknown = set(preset) - known
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    sampler = str(settings.get("sampler", preset.get("sampler", "tpe")))
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler={sampler!r} is not one of {', '.join(SAMPLERS)}")
    n_trials = settings.get("n_trials", preset.get("n_trials"))
    n_trials = None if n_trials in (None, "null", "None") else _as_positive_int(n_trials, "n_trials")
    if sampler != "grid" and n_trials is None:
        raise ConfigError(f"sampler={sampler} needs a trial budget: n_trials=N")
    preset_overrides = [f"{k}={v}" for k, v in (preset.get("config") or {}).items()]
    seed = next((o.split("=", 1)[1] for o in cli_overrides if o.startswith("seed=")), preset.get("seed", 0))
    params = {str(k): str(v) for k, v in (preset.get("params") or {}).items()}
    params.update(cli_axes)
    for key in list(params):
        if any(o.split("=", 1)[0] == key for o in cli_overrides):  # a fixed value on the command line wins
            del params[key]
    if not params:
        raise ConfigError(f"sweep {name!r} searches nothing: give at least one axis, e.g. injection.layer='range(0,all)'")
    spec = SweepSpec(
        name=name,
        sampler=sampler,
        n_trials=n_trials,
        seed=int(seed),
        # Sweeps pick sites on the train part only; `meminject best` judges them on the held-out part.
        overrides=(["data.part=train"] if not any(o.startswith("data.part=") for o in preset_overrides + cli_overrides) else [])
        + preset_overrides + cli_overrides + ([f"seed={seed}"] if not any(o.startswith("seed=") for o in cli_overrides) else []),
        params=params,
        study_name=str(settings.get("study", "")),
    )
    return spec, settings


def _model_sizes(spec: SweepSpec) -> tuple[Any, dict[str, int]]:
    """Compose the base config and read layer/head counts (the smallest over a model axis)."""
    from .models import load_model

    base = compose_config(spec.overrides)
    models = [str(base.model.name)]
    if "model" in spec.params:
        axis = parse_space({"model": spec.params["model"]}).axes[0]
        models = [str(m) for m in (axis.discrete_values or [])]
    sizes = None
    for model_name in models:
        cfg = compose_config([*spec.overrides, f"model={model_name}"]) if "model" in spec.params else base
        model = load_model(cfg.model)
        here = {"n_layers": model.n_layers, "n_heads": model.n_heads, "model": model.name}
        if sizes is None or here["n_layers"] < sizes["n_layers"]:
            sizes = {**here, "n_heads": min(here["n_heads"], (sizes or here)["n_heads"])}
    return base, sizes


def resolve_space(spec: SweepSpec) -> tuple[Any, SearchSpace]:
    """Validate every axis against the model(s) and collapse a degenerate head axis."""
    from .evaluation import InjectionSpec

    base, sizes = _model_sizes(spec)
    space = parse_space(spec.params, sizes)
    # The paper's head site adds τ·v to one head's result, which is summed into the
    # attention output: every head gives the layer's result. Searching heads would only
    # repeat points, so the axis is dropped (head 0 is recorded) and we say so once.
    if "injection.head" in space.keys:
        sites = space.distributions.get("injection.site")
        site_values = list(sites.choices) if isinstance(sites, od.CategoricalDistribution) else [str(base.injection.site)]
        if all(str(s) in ("head", "layer") for s in site_values) and not base.injection.get("literal_hook", False):
            note = "the head axis is degenerate for site=head/layer (every head adds to the same summed attention output): collapsed to head 0, each layer point runs once"
            spec.notes.append(note)
            log.warning("note: %s", note)
            space = SearchSpace([a for a in space.axes if a.key != "injection.head"])
            spec.params.pop("injection.head", None)
            spec.overrides.append("injection.head=0")
    # Fail before any trial: check fixed values and one point of the space.
    probe = [f"{a.key}={_format_value(_first_value(a.distribution))}" for a in space.axes]
    cfg = compose_config([*spec.overrides, *probe])
    InjectionSpec.from_config(cfg).validate()
    for axis in space.axes:
        if axis.key.startswith(("injection.", "memory.")):
            for value in axis.discrete_values or []:
                InjectionSpec.from_config(compose_config([*spec.overrides, *probe, f"{axis.key}={_format_value(value)}"])).validate()
    return base, space


def _first_value(distribution: od.BaseDistribution) -> Any:
    if isinstance(distribution, od.CategoricalDistribution):
        return distribution.choices[0]
    return distribution.low


def _format_value(value: Any) -> str:
    return str(value)


_BASE_CONFIGS: dict[tuple[str, ...], Any] = {}
_FAST_KEYS = ("injection.", "memory.")  # leaf keys no interpolation in conf/ reads


def trial_config(overrides: Sequence[str], params: dict[str, Any]) -> Any:
    """The config of one trial: the sweep's fixed overrides plus the trial's sampled values.

    A Hydra compose costs ~0.2 s, more than a whole trial of a small model; a worker composes
    the base once and sets the sampled injection/memory leaves on a copy (what the override
    would do: no interpolation reads them). Group choices (``model=...``) and other keys take
    the full compose. Both give the same config (tested).
    """
    full = [*overrides, *(f"{k}={_format_value(v)}" for k, v in params.items())]
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


# --------------------------------------------------------------------------- storage


def default_storage_url() -> str:
    return str(mlruns_dir() / "optuna.journal")


def open_storage(url: str | None, heartbeat: tuple[int, int] | None = None, recovery: StaleTrialRecovery | None = None) -> optuna.storages.BaseStorage:
    """A journal file (default, safe for local workers), or any RDB URL (sqlite, postgresql, …).

    With ``heartbeat=(interval, grace)`` running trials beat and stale ones go to ``recovery``.
    """
    url = url or default_storage_url()
    beat = {} if heartbeat is None else {"heartbeat_interval": heartbeat[0], "grace_period": heartbeat[1], "heartbeat_stale_trial_callback": recovery}
    try:
        if "://" not in url:
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            Path(url).parent.mkdir(parents=True, exist_ok=True)
            if heartbeat is None:
                return JournalStorage(JournalFileBackend(url))
            return HeartbeatJournalStorage(JournalFileBackend(url), **beat)
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **beat)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors of many kinds
        raise ConfigError(f"cannot open study storage {redact(url)} ({str(exc).splitlines()[0][:200]})") from exc


def _make_sampler(spec: SweepSpec, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    seed = spec.seed + worker_index  # each worker its own stream; 1 worker = the sweep seed
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _study_name(spec: SweepSpec, base: Any) -> str:
    return spec.study_name or f"{spec.name}-{base.model.name}-{base.data.name}"


def _canonical_params(params: dict[str, Any]) -> str:
    return json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True, default=str)


def prepare_study(spec: SweepSpec, storage_url: str | None, heartbeat: tuple[int, int] | None = None) -> tuple[optuna.Study, SearchSpace, Any]:
    """Create or resume the study; enqueue missing grid points; store the sweep spec."""
    base, space = resolve_space(spec)
    spec.study_name = _study_name(spec, base)
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name=spec.study_name, storage=storage, direction="maximize", load_if_exists=True, sampler=_make_sampler(spec))
    stored = study.user_attrs.get(ATTR_SPEC)
    if stored is not None:
        old = SweepSpec.from_json(stored)
        if old.params != spec.params or old.sampler != spec.sampler or sorted(old.overrides) != sorted(spec.overrides):
            raise ConfigError(
                f"study {spec.study_name!r} exists with a different search space or config "
                f"({old.sampler}: {old.params}); resume it unchanged, or pass study=NEW_NAME"
            )
    study.set_user_attr(ATTR_SPEC, spec.to_json())
    if heartbeat is not None:
        study.set_user_attr(ATTR_HEARTBEAT, list(heartbeat))
    study.set_user_attr("meminject.space", json.dumps(space.signature(), sort_keys=True))
    if spec.sampler == "grid":
        points = space.grid()
        if spec.n_trials is not None:
            points = points[: spec.n_trials]
        taken = {
            # a WAITING trial is an enqueued point (fixed_params) or a re-queued stale trial (params)
            _canonical_params(t.params if t.state != TrialState.WAITING else (t.system_attrs.get("fixed_params") or t.params))
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING))
            if not t.user_attrs.get(ATTR_SURPLUS)
        }
        for point in points:
            if _canonical_params(point) not in taken:
                study.enqueue_trial(point, skip_if_exists=False)
    return study, space, base


def _budget(spec: SweepSpec, space: SearchSpace) -> int:
    if spec.sampler == "grid":
        total = len(space.grid())
        return min(total, spec.n_trials) if spec.n_trials else total
    return int(spec.n_trials or 0)


def _counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)) if not t.user_attrs.get(ATTR_SURPLUS)]


# --------------------------------------------------------------------------- the worker


class TrialRunner:
    """Per worker: models, datasets and evaluators loaded once and reused by every trial."""

    def __init__(self) -> None:
        self._evaluators: dict[str, Any] = {}
        self._datasets: dict[str, Any] = {}
        self.batch_scale = 1.0  # halved after each out-of-memory error

    def evaluator(self, cfg: Any):
        from .data import load_dataset
        from .evaluation import Evaluator
        from .models import load_model

        if self.batch_scale < 1.0:  # after an OOM: smaller batches and cache, one trial per pass
            cfg = copy.deepcopy(cfg)
            cfg.perf.max_batch_tokens = max(1, int(int(cfg.perf.max_batch_tokens) * self.batch_scale))
            cfg.perf.prefix_cache_mb = float(cfg.perf.prefix_cache_mb) * self.batch_scale
            cfg.perf.trials_per_forward = 1
        data_key = to_yaml(cfg.data)
        if data_key not in self._datasets:
            self._datasets[data_key] = load_dataset(cfg.data)
        key = to_yaml(cfg.model) + data_key + to_yaml(cfg.perf) + str(cfg.top_k) + str(cfg.metric.answer)
        if key not in self._evaluators:
            model = load_model(cfg.model)
            self._evaluators[key] = Evaluator.from_config(model, self._datasets[data_key], cfg)
        return self._evaluators[key]

    def run(self, cfg: Any):
        return self.run_many([cfg])[0]

    def run_many(self, cfgs: list[Any]) -> list[tuple[Any, Any, Any]]:
        """Evaluate several trial configs; those sharing an evaluator share stacked passes."""
        from .evaluation import InjectionSpec

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
            for i, result in zip(indices, evaluator.evaluate_many([(items[i][1], items[i][2].memory) for i in indices])):
                results[i] = result
        return [(evaluator, spec, result) for (evaluator, spec, _), result in zip(items, results)]

    def trials_per_forward(self, cfg: Any) -> int:
        return self.evaluator(cfg).trials_per_forward

    def shrink_after_oom(self) -> float:
        """Free the device memory held by evaluators and halve the batch budget for what follows."""
        import gc

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


def _suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    return {axis.key: trial._suggest(axis.key, axis.distribution) for axis in space.axes}


def _trial_key(cfg: Any, spec: Any) -> str:
    canonical = spec.canonical()
    return json.dumps(
        {"model": str(cfg.model.name), "weights": str(cfg.model.weights), "data": str(cfg.data.name), "limit": cfg.data.limit, "sample": cfg.data.sample,
         "split": cfg.data.get("split"), "part": cfg.data.get("part", "all"), "memory": {k: str(v) for k, v in cfg.memory.items()}, "scale": canonical.scale,
         "spec": [canonical.layer, canonical.tweak, canonical.site, canonical.head, canonical.positions, canonical.memory_type, canonical.encoding], "seed": int(cfg.seed), "metric": str(cfg.metric.answer)},
        sort_keys=True,
    )


def _site_record(cfg: Any, params: dict[str, Any]) -> dict[str, Any]:
    site = str(cfg.injection.site)
    return {
        "model": str(cfg.model.name),
        "weights": str(cfg.model.weights),
        "injection.layer": int(cfg.injection.layer),
        "injection.head": cfg.injection.head if site != "layer" else None,
        "injection.site": site,
        "injection.positions": str(cfg.injection.positions),
        "injection.scale": str(cfg.injection.get("scale", "absolute")),
        "injection.tweak": float(cfg.injection.tweak),
        "memory.type": str(cfg.memory.type),
        "memory.encoding": str(cfg.memory.encoding),
    }


def run_worker(study_name: str, storage_url: str | None, *, worker_index: int = 0, progress: bool = True, max_trials: int | None = None) -> int:
    """Run trials of a prepared study until its budget or grid is used up; returns trials run here."""
    storage = open_storage(storage_url)
    try:
        summaries = optuna.get_all_study_summaries(storage)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"cannot read study storage {redact(storage_url)} ({str(exc).splitlines()[0][:200]})") from exc
    if study_name not in {s.study_name for s in summaries}:
        raise ConfigError(f"no study {study_name!r} in {redact(storage_url or default_storage_url())}; start it with `meminject sweep`")
    probe = optuna.load_study(study_name=study_name, storage=storage)
    if ATTR_SPEC not in probe.user_attrs:
        raise ConfigError(f"study {study_name!r} was not created by meminject sweep")
    spec = SweepSpec.from_json(probe.user_attrs[ATTR_SPEC])
    # Reopened with heartbeats: this worker's trials beat; stale trials of dead workers are re-queued.
    recovery = StaleTrialRecovery()
    interval, grace = probe.user_attrs.get(ATTR_HEARTBEAT, DEFAULT_HEARTBEAT)
    storage = open_storage(storage_url, heartbeat=(int(interval), int(grace)), recovery=recovery)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=_make_sampler(spec, worker_index))
    base = compose_config(spec.overrides)
    space = parse_space(spec.params, _model_sizes(spec)[1])
    budget = _budget(spec, space)
    tracker = Tracker.from_config(base)
    recovery.tracker = tracker
    parent_run_id = study.user_attrs.get(ATTR_PARENT)
    runner = TrialRunner()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=budget, initial=len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))), desc=f"{study_name}", unit="trial", dynamic_ncols=True)
    ran = 0
    per_forward = runner.trials_per_forward(base)
    waiter = _RunningWaiter(int(interval), int(grace))
    try:
        while max_trials is None or ran < max_trials:
            want = per_forward if max_trials is None else min(per_forward, max_trials - ran)
            asked = _ask_trials(study, spec, space, budget, want)
            if not asked:
                if waiter.should_wait(study):
                    continue  # other workers' trials still running: they finish, or go stale and come back to us
                break
            try:
                _run_trials(study, asked, spec, runner, tracker, parent_run_id, worker_index)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is survivable
                if not is_out_of_memory(exc):
                    raise
                # The trials were failed cleanly by _run_trials; free memory, shrink, re-queue the points.
                scale = runner.shrink_after_oom()
                if spec.sampler == "grid":
                    for _, params in asked:
                        study.enqueue_trial(params, skip_if_exists=False)
                per_forward = 1
                log.warning("out of memory in trial(s) %s: failed and re-queued; continuing with %g× the batch budget", [t.number for t, _ in asked], scale)
                continue
            ran += len(asked)
            if bar is not None:
                bar.update(len(asked))
                try:
                    bar.set_postfix(best=f"{study.best_value:+.4f}", trial=study.best_trial.number)
                except ValueError:
                    pass
    finally:
        if bar is not None:
            bar.close()
    return ran


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
            log.warning("trials %s stay RUNNING without heartbeats; leaving them (rerun the sweep to resume)", sorted(running))
            return False
        time.sleep(self.pause)
        return True


def _ask_trials(study: optuna.Study, spec: SweepSpec, space: SearchSpace, budget: int, want: int) -> list[tuple[Any, dict[str, Any]]]:
    """Up to ``want`` trials for this worker: queued grid points, or new sampler suggestions
    within the global budget (a slot another worker took meanwhile is given back as FAIL)."""
    asked = []
    recover_stale_trials(study)  # a dead worker's trials: failed, their points re-queued
    for _ in range(want):
        if spec.sampler == "grid":
            trial_id = study._pop_waiting_trial_id()  # atomic: one worker gets each queued point
            if trial_id is None:
                break
            trial = optuna.Trial(study, trial_id)
        else:
            if len(_counted(study)) >= budget:
                break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": ours beats itself
                trial = study.ask()
            ahead = [t for t in _counted(study) if t.number < trial.number]
            if len(ahead) >= budget:  # another worker took the last slot meanwhile
                trial.set_user_attr(ATTR_SURPLUS, True)
                study.tell(trial, state=TrialState.FAIL)
                break
        asked.append((trial, _suggest(trial, space)))
    return asked


def _run_one_trial(study, trial, params, spec: SweepSpec, runner: TrialRunner, tracker: Tracker | None, parent_run_id: str | None, worker_index: int = 0) -> None:
    _run_trials(study, [(trial, params)], spec, runner, tracker, parent_run_id, worker_index)


def _run_trials(study, asked: list[tuple[Any, dict[str, Any]]], spec: SweepSpec, runner: TrialRunner, tracker: Tracker | None, parent_run_id: str | None, worker_index: int = 0) -> None:
    """Run asked trials (one, or several sharing stacked passes) and record each in Optuna and MLflow,
    beating for them meanwhile (so a dead worker's trials are found stale and re-run).

    If anything fails, every trial not yet told is marked FAIL in both, then the error propagates.
    """
    with heartbeats(study._storage, [trial._trial_id for trial, _ in asked]):
        _run_trials_beating(study, asked, spec, runner, tracker, parent_run_id, worker_index)


def _run_trials_beating(study, asked, spec: SweepSpec, runner: TrialRunner, tracker: Tracker | None, parent_run_id: str | None, worker_index: int) -> None:
    started = time.perf_counter()
    pending = list(asked)  # (trial, params) not yet told
    run_ids: dict[int, str] = {}
    try:
        cfgs = []
        for trial, params in asked:
            cfg = trial_config(spec.overrides, params)
            cfgs.append(cfg)
            trial.set_user_attr(ATTR_KEY, _trial_key(cfg, InjectionSpec.from_config(cfg)))
            trial.set_user_attr("worker_index", worker_index)
            if tracker is not None and parent_run_id:
                tags = {"meminject.sampler": spec.sampler, "meminject.sweep": spec.name, "meminject.worker": str(worker_index)}
                commit = git_commit()
                if commit:
                    tags["mlflow.source.git.commit"] = commit
                run_ids[trial.number] = tracker.start_trial(parent_run_id, trial.number, spec.study_name, tags)
                trial.set_user_attr("mlflow_run_id", run_ids[trial.number])
        delay = float(os.environ.get("MEMINJECT_TRIAL_DELAY_S", "0") or 0)
        if delay > 0:  # fault-injection hook of the crash-recovery tests: a window to kill a worker mid-trial
            time.sleep(delay)
        outcomes = runner.run_many(cfgs)
        seconds = (time.perf_counter() - started) / len(asked)  # stacked trials share the cost
        for (trial, params), cfg, (evaluator, _, result) in zip(asked, cfgs, outcomes):
            run_id = run_ids.get(trial.number)
            try:
                mean_gain = _record_trial(trial, params, cfg, evaluator, result, seconds, len(asked), tracker, run_id)
                study.tell(trial, mean_gain)
            except optuna.exceptions.UpdateFinishedTrialError:
                # This worker stalled past the grace period and another one failed the trial and
                # re-queued its point: the retry's result counts, this one is dropped.
                log.warning("trial %d was failed as stale by another worker while running here; its point was re-queued", trial.number)
                pending = [(t, p) for t, p in pending if t is not trial]
                if tracker is not None and run_id is not None:
                    tracker.fail(run_id, "stale: re-queued by another worker before this result arrived")
                continue
            pending = [(t, p) for t, p in pending if t is not trial]
            if tracker is not None and run_id is not None:
                # Closed after Optuna has the value; an interruption in between is repaired on resume.
                tracker.finish(run_id, "FINISHED")
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        for trial, _ in pending:
            try:
                trial.set_user_attr("failure", reason[:500])
                study.tell(trial, state=TrialState.FAIL)
            except Exception:  # noqa: BLE001 - the storage may be what failed
                pass
            if tracker is not None and trial.number in run_ids:
                tracker.fail(run_ids[trial.number], reason)
        raise


def _record_trial(trial, params, cfg, evaluator, result, seconds: float, stacked: int, tracker: Tracker | None, run_id: str | None) -> float:
    """Store a trial's results in Optuna (user attributes) and MLflow (params, metrics,
    artifacts; the run stays open until Optuna has the value). Returns the objective."""
    summary = dict(result.summary)
    for name, value in summary.items():
        trial.set_user_attr(name, value)
    trial.set_user_attr("trial_seconds", seconds)
    _release_freed_memory()
    rss = resident_mb()
    if rss is not None:  # the worker's memory after each trial: a per-trial leak shows as a slope
        trial.set_user_attr("worker_rss_mb", rss)
        summary["worker_rss_mb"] = rss
    for name, value in _site_record(cfg, params).items():
        trial.set_user_attr(f"site.{name}", value)
    if tracker is not None and run_id is not None:
        dataset = evaluator.dataset
        logged_params = {
            **dict(params),
            "model": cfg.model.name, "weights": cfg.model.weights, "dataset": dataset.name, "dataset_hash": dataset.content_hash,
            "memory.type": cfg.memory.type, "memory.encoding": cfg.memory.encoding, "injection.site": cfg.injection.site,
            "injection.positions": cfg.injection.positions, "injection.layer": cfg.injection.layer, "injection.tweak": cfg.injection.tweak,
            "injection.head": cfg.injection.head, "seed": cfg.seed, "hook": result.hooks[0], "n_prompts": len(dataset),
            "trials_per_forward": stacked, "memory.word_source": word_source(cfg.memory),
        }
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            artifacts: dict[str, Any] = {"per_prompt.csv": result.per_prompt.to_csv(index=False), "config.yaml": to_yaml(redacted_config(cfg))}
            if cfg.tracking.get("trial_figures", True):
                title = f"trial {trial.number}: L{cfg.injection.layer} τ={float(cfg.injection.tweak):.3g} {cfg.memory.encoding}/{cfg.memory.type}"
                figure = _trial_figure(result.per_prompt, Path(folder) / "per_prompt_gains.png", title)
                if figure is not None:
                    artifacts["per_prompt_gains.png"] = figure
            tracker.finish_trial(run_id, logged_params, {**summary, "trial_seconds": seconds}, artifacts, terminate=False)
    return float(summary["mean_gain"])


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after the figure's and the
    tracker's large short-lived buffers, which reads as a slow climb over thousands of trials)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


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
    from .figures import per_prompt_gains

    try:
        return per_prompt_gains(per_prompt, path, title)
    except Exception as exc:  # noqa: BLE001
        log.debug("trial figure skipped: %s", exc)
        return None


# --------------------------------------------------------------------------- results


def ranked_sites(study: optuna.Study, top: int | None = None):
    """Complete trials grouped by injection site, best mean gain first."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        record = {k[len("site."):]: v for k, v in t.user_attrs.items() if k.startswith("site.")}
        if not record:
            continue
        record.update({"mean_gain": t.value, "frac_improved": t.user_attrs.get("frac_improved"), "mean_prob_after": t.user_attrs.get("mean_prob_after"), "mean_prob_before": t.user_attrs.get("mean_prob_before"), "trial": t.number})
        rows.append(record)
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    keys = [k for k in SITE_KEYS if k in frame.columns]
    frame[keys] = frame[keys].astype(object).where(frame[keys].notna(), "-")
    grouped = frame.groupby(keys, dropna=False, sort=False).agg(
        mean_gain=("mean_gain", "mean"), frac_improved=("frac_improved", "mean"), mean_prob_before=("mean_prob_before", "mean"),
        mean_prob_after=("mean_prob_after", "mean"), trials=("trial", "count"), best_trial=("trial", "min"),
    ).reset_index()
    grouped = grouped.sort_values("mean_gain", ascending=False, kind="stable").reset_index(drop=True)
    grouped.insert(0, "rank", range(1, len(grouped) + 1))
    return grouped.head(top) if top else grouped


def distinct_sites(table):
    """One row per site (layer, head, site, positions, scale, encoding, memory type, model):
    its best τ. A continuous τ axis otherwise fills the top ranks with one site at nearby τ."""
    if table.empty:
        return table
    keys = [k for k in SITE_KEYS if k in table.columns and k != "injection.tweak"]
    best = table.sort_values("mean_gain", ascending=False, kind="stable").drop_duplicates(keys, keep="first").reset_index(drop=True)
    best["rank"] = range(1, len(best) + 1)
    return best


def _print_table(frame) -> None:
    if frame.empty:
        print("no complete trials yet")
        return
    columns = ["rank", "model", "injection.layer", "injection.head", "injection.tweak", "memory.encoding", "memory.type", "injection.site", "injection.positions", "mean_gain", "frac_improved", "trials"]
    shown = frame[[c for c in columns if c in frame.columns]].rename(columns=lambda c: c.split(".")[-1])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def control_gaps(table):
    """Per site: the correct memory's mean gain minus each control's (same prompts, so the
    mean of the paired differences); None unless the study has correct and control trials."""
    if table.empty or "memory.type" not in table.columns:
        return None
    types = set(table["memory.type"])
    if "correct" not in types or len(types) < 2:
        return None
    keys = [k for k in SITE_KEYS if k in table.columns and k != "memory.type"]
    wide = table.pivot_table(index=keys, columns="memory.type", values="mean_gain", aggfunc="mean").reset_index()
    for control in sorted(types - {"correct"}):
        wide[f"gap_{control}"] = wide["correct"] - wide[control]
    return wide.sort_values("correct", ascending=False, kind="stable").reset_index(drop=True)


def finalize(study: optuna.Study, spec: SweepSpec, tracker: Tracker | None) -> Path:
    """Write the ranked sites; update the parent run with the best trial and the table."""
    table = ranked_sites(study)
    out = Path("outputs") / "best"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{study.study_name}.csv"
    table.to_csv(path, index=False)
    parent = study.user_attrs.get(ATTR_PARENT)
    gaps = control_gaps(table)
    gaps_path = out / f"{study.study_name}-control-gaps.csv"
    if gaps is not None:
        gaps.to_csv(gaps_path, index=False)
    figures = []
    try:
        from .figures import sweep_figures

        figures = sweep_figures(study, table, Path("outputs") / "figures" / study.study_name)
    except Exception as exc:  # noqa: BLE001 - a figure must never cost the results
        log.warning("note: sweep figures skipped (%s)", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if tracker is not None and parent:
        tracker.log_file(parent, path)
        if gaps is not None:
            tracker.log_file(parent, gaps_path)
        for figure in figures:
            tracker.log_file(parent, figure, "figures")
        try:
            best = study.best_trial
            tracker.log_metrics(parent, {"best_mean_gain": best.value, "best_trial": best.number, "n_complete": len(study.get_trials(states=(TrialState.COMPLETE,)))})
            tracker.client.set_tag(parent, "meminject.best_params", json.dumps(best.params, default=str))
        except ValueError:
            pass
    return path


# --------------------------------------------------------------------------- commands


def _threads_for(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def _start_parent_run(study: optuna.Study, spec: SweepSpec, base: Any, tracker: Tracker | None, storage_url: str | None) -> None:
    if tracker is None:
        return
    tracker.check_reachable()
    parent = study.user_attrs.get(ATTR_PARENT)
    if parent:
        tracker.reopen(parent)
        _reconcile_runs(study, tracker)
        return
    params = {"sweep": spec.name, "sampler": spec.sampler, "n_trials": spec.n_trials, "seed": spec.seed, "model": base.model.name, "weights": base.model.weights, "dataset": base.data.name, "storage": redact(storage_url or default_storage_url())}
    params.update({f"space.{k}": v for k, v in spec.params.items()})
    parent = tracker.start_parent(spec.study_name, params, {"meminject.sampler": spec.sampler})
    shown = json.loads(spec.to_json())
    shown["overrides"] = [redact(o) for o in shown["overrides"]]  # tracking.uri=scheme://user:***@host
    tracker.log_text(parent, "sweep.json", json.dumps(shown, indent=2))
    tracker.log_text(parent, "base_config.yaml", to_yaml(redacted_config(base)))
    study.set_user_attr(ATTR_PARENT, parent)


def _reconcile_runs(study: optuna.Study, tracker: Tracker) -> None:
    """After an interruption: every complete trial's run FINISHED, every other trial's run not RUNNING."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        run_id = t.user_attrs.get("mlflow_run_id")
        if not run_id:
            continue
        status = tracker.client.get_run(run_id).info.status
        if t.state == TrialState.COMPLETE and status != "FINISHED":
            tracker.finish(run_id, "FINISHED")
        elif t.state == TrialState.FAIL and status == "RUNNING":
            tracker.finish(run_id, "FAILED")


def cmd_sweep(args: Sequence[str]) -> int:
    spec, settings = load_sweep(args)
    workers = _as_non_negative_int(settings.get("workers", 1), "workers")
    storage_url = settings.get("storage")
    base_cfg = compose_config(spec.overrides)
    tracker = Tracker.from_config(base_cfg)
    if tracker is not None:
        try:
            tracker.check_reachable()
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"tracking server {redact(tracking_uri(base_cfg))} is unreachable ({str(exc).splitlines()[0][:160]}); start it or set tracking.uri") from exc
    study, space, base = prepare_study(spec, storage_url, _heartbeat_setting(settings))
    _start_parent_run(study, spec, base, tracker, storage_url)
    budget = _budget(spec, space)
    print(f"sweep {spec.name}: study {spec.study_name} · {spec.sampler} sampler · {budget} trials · axes {', '.join(f'{k}={v}' for k, v in spec.params.items())}")
    print(f"  storage {redact(storage_url or default_storage_url())} · workers {workers}" + (f" · MLflow {redact(tracking_uri(base))}" if tracker else ""))
    if workers == 0 and len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < budget:
        # Prepare only: the study, its grid queue and the parent run exist; workers start anywhere.
        print(f"  prepared; start workers (any machine that reaches the storage and the tracking server):\n"
              f"    meminject worker study={spec.study_name} storage={redact(storage_url or default_storage_url())} worker_index=N\n"
              f"  then rerun this command to finish the parent run and write the ranked sites")
        return 0
    started = time.perf_counter()
    status = "FINISHED"
    try:
        if workers == 0:
            pass  # all trials done by separate workers: finalize below
        elif workers == 1:
            run_worker(spec.study_name, storage_url)
        else:
            _spawn_workers(spec, storage_url, workers, budget)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if tracker is not None and study.user_attrs.get(ATTR_PARENT):
            path = finalize(study, spec, tracker)
            if status == "FINISHED":
                tracker.finish(study.user_attrs[ATTR_PARENT], "FINISHED" if len(_counted(study)) >= budget else "RUNNING")
            else:
                tracker.finish(study.user_attrs[ATTR_PARENT], status)
    wall = time.perf_counter() - started
    path = finalize(study, spec, None) if tracker is None or not study.user_attrs.get(ATTR_PARENT) else Path("outputs") / "best" / f"{study.study_name}.csv"
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    print(f"done: {len(complete)} complete trials in {wall:.1f} s")
    table = ranked_sites(study, top=5)
    _print_table(table)
    print(f"ranked sites: {path}")
    return 0


def _heartbeat_setting(settings: dict[str, str]) -> tuple[int, int] | None:
    """``heartbeat=SECONDS grace=SECONDS`` of the sweep command (None: keep the study's, or the default)."""
    if "heartbeat" not in settings and "grace" not in settings:
        return None
    interval = _as_positive_int(settings.get("heartbeat", DEFAULT_HEARTBEAT[0]), "heartbeat")
    grace = _as_positive_int(settings.get("grace", max(DEFAULT_HEARTBEAT[1], 4 * interval)), "grace")
    if grace <= interval:
        raise ConfigError(f"grace={grace} must be longer than heartbeat={interval} (a trial is stale after missing beats for the grace period)")
    return interval, grace


def _spawn_workers(spec: SweepSpec, storage_url: str | None, workers: int, budget: int) -> None:
    import torch

    storage_arg = storage_url or default_storage_url()
    procs = []
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index in range(workers):
        env = dict(os.environ)
        if n_gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(index % n_gpus)
        else:
            threads = str(_threads_for(workers))
            env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "MEMINJECT_THREADS": threads})
        cmd = [sys.executable, "-m", "meminject", "worker", f"study={spec.study_name}", f"storage={storage_arg}", f"worker_index={index}", "progress=false"]
        procs.append(subprocess.Popen(cmd, env=env))
    storage = open_storage(storage_url)
    study = optuna.load_study(study_name=spec.study_name, storage=storage)
    from tqdm.auto import tqdm

    failed = []
    with tqdm(total=budget, desc=spec.study_name, unit="trial", dynamic_ncols=True) as bar:
        try:
            while any(p.poll() is None for p in procs):
                time.sleep(1.0)
                complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                bar.update(max(0, len(complete) - bar.n))
                if complete:
                    leader = max(complete, key=lambda t: t.value)
                    bar.set_postfix(best=f"{leader.value:+.4f}", trial=leader.number)
            done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            bar.update(max(0, done - bar.n))
        except KeyboardInterrupt:
            for p in procs:
                p.send_signal(2)
            for p in procs:
                p.wait()
            raise
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        raise MemInjectError(f"worker(s) {', '.join(map(str, failed))} exited with an error (see their output above); rerun the same command to resume")


def cmd_worker(args: Sequence[str]) -> int:
    settings = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"bad argument {arg!r}: expected key=value")
        key, value = arg.split("=", 1)
        if key not in ("study", "storage", "worker_index", "progress", "max_trials"):
            raise ConfigError(f"unknown worker setting {key!r} (study, storage, worker_index, progress, max_trials); the config comes from the study")
        settings[key] = value
    if "study" not in settings:
        raise ConfigError("meminject worker needs study=NAME (and storage=URL unless the default)")
    threads = os.environ.get("MEMINJECT_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    ran = run_worker(
        settings["study"], settings.get("storage"), worker_index=int(settings.get("worker_index", 0)),
        progress=settings.get("progress", "true").lower() != "false",
        max_trials=int(settings["max_trials"]) if "max_trials" in settings else None,
    )
    print(f"worker {settings.get('worker_index', 0)}: {ran} trials")
    return 0


def cmd_best(args: Sequence[str]) -> int:
    """Ranked sites of a study; with a train/held-out split, the top sites judged on held-out prompts."""
    settings = {}
    allowed = ("study", "storage", "top", "heldout", "controls", "bootstrap", "distinct")
    for arg in args:
        key, _, value = arg.partition("=")
        if key not in allowed:
            raise ConfigError(f"unknown setting {key!r} for best ({', '.join(allowed)})")
        settings[key] = value
    storage = open_storage(settings.get("storage"))
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if not names:
        raise ConfigError("no studies yet; run `meminject sweep` first")
    name = settings.get("study") or names[-1]
    if name not in names:
        raise ConfigError(f"no study {name!r}; studies: {', '.join(names)}")
    study = optuna.load_study(study_name=name, storage=storage)
    top = _as_positive_int(settings.get("top", 10), "top")
    table = ranked_sites(study)
    distinct = settings.get("distinct", "false").lower()
    if distinct not in ("true", "false"):
        raise ConfigError(f"distinct={distinct!r}: use true (the best τ of each site) or false (every point)")
    if distinct == "true":
        table = distinct_sites(table)
    out = Path("outputs") / "best"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}{'-distinct' if distinct == 'true' else ''}.csv"
    table.to_csv(path, index=False)
    unit = "sites (best τ of each)" if distinct == "true" else "distinct sites"
    print(f"study {name}: {len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))} complete trials, {len(table)} {unit}")
    _print_table(table.head(top))
    print(f"table: {path}")
    spec_json = study.user_attrs.get(ATTR_SPEC)
    parent = study.user_attrs.get(ATTR_PARENT)
    spec = SweepSpec.from_json(spec_json) if spec_json else None
    tracker = Tracker.from_config(compose_config(spec.overrides)) if spec else None
    if tracker is not None and parent:
        tracker.log_file(parent, path)
    heldout = settings.get("heldout", "auto").lower()
    if heldout not in ("auto", "true", "false"):
        raise ConfigError(f"heldout={heldout!r}: use true, false or auto")
    base = compose_config(spec.overrides) if spec else None
    has_split = base is not None and base.data.get("split") is not None and str(base.data.get("part")) == "train"
    if heldout == "true" and not has_split:
        raise ConfigError(f"study {name!r} was not run on a train part (data.split, data.part=train); held-out evaluation is impossible")
    if table.empty or heldout == "false" or not has_split:
        return 0
    from .selection import heldout_report

    controls = [c for c in settings.get("controls", "pos,random_vector").split(",") if c]
    report = heldout_report(
        spec.overrides, table.head(top), controls=controls, n_boot=_as_positive_int(settings.get("bootstrap", 2000), "bootstrap"),
        seed=spec.seed, axes=list(spec.params),
    )
    report_path = out / f"{name}-heldout.csv"
    report.to_csv(report_path, index=False)
    print(f"\nheld-out check of the top {len(report)} sites ({int(report['heldout_prompts'].iloc[0])} held-out prompts; 95% bootstrap intervals):")
    _print_heldout(report, controls)
    print(f"held-out table: {report_path}")
    if tracker is not None and parent:
        tracker.log_file(parent, report_path)
    return 0


def _print_heldout(report, controls: Sequence[str]) -> None:
    lines = []
    for _, r in report.iterrows():
        head = "" if r.get("injection.head") in (None, "-") or (isinstance(r.get("injection.head"), float) and math.isnan(r.get("injection.head"))) else f" h{r['injection.head']}"
        site = f"L{r['injection.layer']}{head} τ={float(r['injection.tweak']):.3g} {r['memory.encoding']}/{r['memory.type']}"
        text = f"  {int(r['rank']):>2} {site:<34} train {r['train_gain']:+.4f}  held-out {r['heldout_gain']:+.4f} [{r['heldout_ci_low']:+.4f}, {r['heldout_ci_high']:+.4f}] improved {r['heldout_frac_improved']:.0%}"
        for control in controls:
            text += f"  gap vs {control} {r[f'gap_{control}']:+.4f} (p={r[f'gap_{control}_p']:.3f})"
        if r["heldout_includes_zero"]:
            text += "  ⚠ held-out interval includes 0"
        lines.append(text)
    print("\n".join(lines))
