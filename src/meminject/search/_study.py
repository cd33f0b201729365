"""The study: its search space checked against the model, its sampler and budget (grid queue: :mod:`._grid`).

:func:`prepare_study` creates or resumes a study and stores the sweep spec in it, under a
storage lock, so that two ``meminject sweep`` commands on one study enqueue each grid point
once. Workers get distinct sampler seeds from :func:`register_worker`, under the same lock.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

import optuna
import optuna.distributions as od
from optuna.trial import FrozenTrial, TrialState

from ..tracking._schema import ATTR_HEARTBEAT, ATTR_PARENT, ATTR_SPACE, ATTR_SPEC, ATTR_SURPLUS, ATTR_WORKERS
from ..config import RunConfig, load_run_config, needs_compose, with_values
from ..core._errors import ConfigError
from ..engine._spec import InjectionSpec
from ..engine._models import Shape, model_shape
from ._grid import (
    DONE,
    canonical_params,
    enqueue_missing,
    first_value,
    grid_points,
    point_of,
    pruned_grid_order,
)  # the grid queue's names are re-exported
from ._adaptive import enqueue_next_round, ladder_of
from ._models import model_sizes, sweep_models
from ._space import SearchSpace, parse_space
from ._pruning import make_pruner
from ._samplers import BoundedTPESampler
from ._settings import SweepSpec
from ._keys import check_study_name
from ..store._storage import open_storage, storage_lock

__all__ = [
    "DONE",
    "ATTR_SPEC",
    "ATTR_PARENT",
    "ATTR_HEARTBEAT",
    "ATTR_SURPLUS",
    "ATTR_WORKERS",
    "resolve_space",
    "space_of",
    "prepare_study",
    "name_study",
    "preflight",
    "budget",
    "counted",
    "make_sampler",
    "register_worker",
    "canonical_params",
    "point_of",
    "grid_points",
    "pruned_grid_order",
    "leader",
    "create_kwargs",
    "stored_spec",
    "stored_budget",
    "budget_line",
]

log = logging.getLogger("meminject")


def space_of(spec: SweepSpec, base: RunConfig) -> SearchSpace:
    return parse_space(spec.params, model_sizes(spec, base))


def _collapse_tied_encodings(spec: SweepSpec, base: RunConfig, space: SearchSpace) -> SearchSpace:
    """With raw weights a tied model's W_U is its W_Eᵀ, so `embed` and `unembed` give the same
    vector: the encoding axis keeps `unembed` only, and we say so once. Paper weights (folded
    norm, centred unembedding) make them differ, so both stay."""
    axis = space.distributions.get("memory.encoding")
    if not isinstance(axis, od.CategoricalDistribution) or not {"embed", "unembed"} <= set(axis.choices):
        return space
    if base.model.weights != "raw" or not model_sizes(spec, base)["tied"]:
        return space
    kept = [c for c in axis.choices if c != "embed"]
    note = (
        f"embed and unembed are the same point for {base.model.name} with raw weights (tied: W_E = W_Uᵀ): "
        "the encoding axis keeps unembed, each point runs once (model.weights=paper makes them differ)"
    )
    spec.notes.append(note)
    log.warning("note: %s", note)
    spec.params["memory.encoding"] = f"choice({', '.join(kept)})"
    return space_of(spec, base)


def resolve_space(spec: SweepSpec) -> tuple[RunConfig, SearchSpace]:
    """Validate every axis against the model(s) and collapse a degenerate head axis."""
    base = load_run_config(spec.overrides)
    space = space_of(spec, base)
    # The paper's head site adds τ·v to one head's result, which is summed into the
    # attention output: every head gives the layer's result. Searching heads would only
    # repeat points, so the axis is dropped (head 0 is recorded) and we say so once.
    if "injection.head" in space.keys:
        sites = space.distributions.get("injection.site")
        site_values = list(sites.choices) if isinstance(sites, od.CategoricalDistribution) else [base.injection.site]
        if all(str(s) in ("head", "layer") for s in site_values) and not base.injection.literal_hook:
            note = "the head axis is degenerate for site=head/layer (every head adds to the same summed attention output): collapsed to head 0, each layer point runs once"
            spec.notes.append(note)
            log.warning("note: %s", note)
            space = SearchSpace([a for a in space.axes if a.key != "injection.head"])
            spec.params.pop("injection.head", None)
            spec.overrides.append("injection.head=0")
            base = load_run_config(spec.overrides)
    space = _collapse_tied_encodings(spec, base, space)
    bound = spec.bound()
    needs_damage = "mean_damage" in spec.all_objectives() or (bound is not None and bound[0] == "mean_damage")
    if needs_damage and base.metric.damage == "none":
        raise ConfigError(
            "this sweep optimizes or bounds mean_damage, but metric.damage=none turns the measure off; use metric.damage=kl"
        )
    _check_axis_values(spec, base, space)
    if spec.sampler == "adaptive":
        ladder_of(space)  # a τ ladder and a layer axis, or one line saying what to give
    return base, space


def _check_axis_values(spec: SweepSpec, base: RunConfig, space: SearchSpace) -> None:
    """Fail before any trial: the fixed values, and every discrete value (and both ends of an
    interval) of each axis, each checked against one base point as its dataclass is built, in
    every model of the sweep (a relative depth resolved to each one's layer); a group or root
    axis (``model``, ``data.*``) takes one compose with its first values."""
    if "injection.layer" in space.keys and ("injection.depth" in space.keys or base.injection.depth is not None):
        raise ConfigError(
            "injection.layer and injection.depth both place the memory: a depth sets the layer per model, "
            "so search one of them (a depth axis spans models of different depths)"
        )
    first = {a.key: first_value(a.distribution) for a in space.axes}
    composed = [k for k in first if needs_compose([k])]
    probe = load_run_config([*spec.overrides, *(f"{k}={first[k]}" for k in composed)]) if composed else base
    probe = with_values(probe, {k: v for k, v in first.items() if k not in composed})
    shapes = [
        Shape(str(s["model"]), int(s["n_layers"]), int(s["n_heads"]))
        for s in (model_shape(m) for m in sweep_models(spec, base))
    ]

    def check(cfg: RunConfig) -> None:
        for shape in shapes:  # every point must fit every model of a model axis
            injection = cfg.injection.resolved(shape.n_layers)
            InjectionSpec.from_config(dataclasses.replace(cfg, injection=injection)).validate(shape)

    check(probe)  # a fixed value out of range fails here, not in a trial
    for axis in space.axes:
        if axis.key in composed:
            continue
        for value in _checked_values(axis.distribution):
            check(with_values(probe, {axis.key: value}))


def preflight(spec: SweepSpec) -> tuple[RunConfig, SearchSpace]:
    """Everything a sweep can check before it writes anything (a study, a run, a file): the
    config and every axis value against the model's shape, and the dataset, loaded and split."""
    from ..data._dataset import load_dataset

    base, space = resolve_space(spec)
    load_dataset(base.data)  # a missing, malformed or too small file: refused before any store exists
    return base, space


def _checked_values(distribution: od.BaseDistribution) -> list[Any]:
    if isinstance(distribution, od.CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, od.IntDistribution) and not distribution.log:
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    return [distribution.low, distribution.high]


def stored_spec(study: optuna.Study) -> SweepSpec | None:
    """The sweep spec a study was created with (None for a study made outside meminject)."""
    text = study.user_attrs.get(ATTR_SPEC)
    return SweepSpec.from_json(text) if text else None


def make_sampler(spec: SweepSpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    seed = spec.seed + seed_offset  # the first worker of a study runs with the sweep's own seed
    constraints = constraints_func(spec)
    if spec.sampler == "tpe":
        # TPE itself up to 250 past trials, then conditioned on the best 25 and the latest 225: flat cost
        return BoundedTPESampler(seed=seed, constraints_func=constraints, multivariate=spec.multi)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints)
    return optuna.samplers.RandomSampler(seed=seed)  # grid points are queued; random needs no model of the objective


def constraints_func(spec: SweepSpec) -> Callable[[FrozenTrial], list[float]] | None:
    """Optuna's ``constraints_func`` for ``constraint=metric<=bound``: a value <= 0 is feasible,
    read from the metric's user attribute (stored before the trial is told)."""
    bound = spec.bound()
    if bound is None:
        return None
    metric, op, value = bound

    def constraints(trial: FrozenTrial) -> list[float]:
        measured = trial.user_attrs.get(metric)
        if measured is None:  # a failed or pruned trial: infeasible
            return [float("inf")]
        return [float(measured) - value if op == "<=" else value - float(measured)]

    return constraints


def create_kwargs(spec: SweepSpec) -> dict[str, Any]:
    """How the study optimizes: one direction, or several (multi-objective)."""
    return {"directions": spec.all_directions()} if spec.multi else {"direction": spec.direction}


def leader(study: optuna.Study) -> dict[str, Any]:
    """The progress bar's postfix: the best trial so far, or the size of the Pareto front."""
    try:
        if len(study.directions) > 1:
            return {"front": len(study.best_trials)}
        best = study.best_trial
        return {"best": f"{best.value:+.4f}", "trial": best.number}
    except ValueError:  # no complete trial yet (only pruned or running ones)
        return {}


def budget(spec: SweepSpec, space: SearchSpace) -> int:
    if spec.sampler == "grid":
        total = len(grid_points(spec, space))
        return min(total, spec.n_trials) if spec.n_trials else total
    return int(spec.n_trials or 0)


def counted(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that use the budget: complete, pruned or running, not given back."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(*DONE, TrialState.RUNNING))
        if not t.user_attrs.get(ATTR_SURPLUS)
    ]


def _check_unchanged(old: SweepSpec, spec: SweepSpec) -> None:
    """Refuse to resume a study stored with another spec (``old``), naming each changed setting."""
    if (
        old.params != spec.params
        or old.sampler != spec.sampler
        or sorted(old.overrides) != sorted(spec.overrides)
        or old.all_objectives() != spec.all_objectives()
        or old.constraint != spec.constraint
    ):
        from ..core._redaction import redact

        def keyed(
            s: SweepSpec,
        ) -> dict[str, str]:  # each setting once, by key: sampler, objective, fixed overrides, axes
            fixed = dict(o.lstrip("+").split("=", 1) for o in s.overrides if "=" in o)
            return {
                "sampler": s.sampler,
                "objective": ",".join(s.all_objectives()),
                "constraint": str(s.constraint),
                **fixed,
                **{k: str(v) for k, v in s.params.items()},
            }

        before, after = keyed(old), keyed(spec)
        changed = [
            f"{k}: {redact(before.get(k, '(unset)'))} → {redact(after.get(k, '(unset)'))}"
            for k in sorted(before.keys() | after.keys())
            if before.get(k) != after.get(k)
        ]
        raise ConfigError(
            f"study {spec.study_name!r} exists with a different search space or config ({'; '.join(changed) or 'override order'}); "
            "resume it unchanged, or pass study=NEW_NAME"
        )


def name_study(spec: SweepSpec, base: RunConfig) -> str:
    """The study's name (``study=``, else ``<sweep>-<model>-<data>``), checked and set on ``spec``."""
    # data.path names the data by its file (its stem, in the study name's alphabet): another file is another study
    data = (
        "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(str(base.data.path)).stem)
        if base.data.path
        else base.data.name
    )
    models = "_".join(m.name for m in sweep_models(spec, base))  # a model axis: every model in the name
    spec.study_name = check_study_name(spec.study_name or f"{spec.name}-{models}-{data}")
    return spec.study_name


def prepare_study(
    spec: SweepSpec,
    storage_url: str | None,
    heartbeat: tuple[int, int] | None = None,
    resolved: tuple[RunConfig, SearchSpace] | None = None,
) -> tuple[optuna.Study, SearchSpace, RunConfig]:
    """Create or resume the study; enqueue missing grid points; store the sweep spec
    (``resolved``: what :func:`preflight` returned for this spec, so it is not resolved twice).

    ``n_trials`` is the study's budget in total: a resumed study stores the new one (its other
    settings must be unchanged), so every worker runs up to it; :func:`stored_budget` tells what
    the study held before (for the start line)."""
    base, space = resolved or resolve_space(spec)
    name_study(spec, base)
    storage = open_storage(storage_url)
    with storage_lock(storage_url, storage):
        study = optuna.create_study(
            study_name=spec.study_name,
            storage=storage,
            load_if_exists=True,
            sampler=make_sampler(spec),
            pruner=make_pruner(spec),
            **create_kwargs(spec),
        )
        stored = study.user_attrs.get(ATTR_SPEC)
        kept = spec.redacted().to_json()  # no password in the study: workers take it from the environment
        _PREVIOUS[spec.study_name] = None
        if stored is not None:
            old = SweepSpec.from_json(stored).redacted()
            _check_unchanged(old, SweepSpec.from_json(kept))
            _PREVIOUS[spec.study_name] = budget(old, space)
            if old.n_trials != spec.n_trials:  # n_trials=N means N in total: the new budget is the study's
                old.n_trials = spec.n_trials
            if old.to_json() != stored:  # a new budget, or stored in clear by an earlier meminject (redacted now)
                study.set_user_attr(ATTR_SPEC, old.to_json())
        else:
            study.set_user_attr(ATTR_SPEC, kept)
        if heartbeat is not None:
            study.set_user_attr(ATTR_HEARTBEAT, list(heartbeat))
        study.set_user_attr(ATTR_SPACE, json.dumps(space.signature(), sort_keys=True))
        if spec.sampler == "grid":
            enqueue_missing(study, spec, space)
        elif spec.sampler == "adaptive":  # its coarse round; later rounds are planned by the workers
            enqueue_next_round(study, spec, space)
    return study, space, base


_PREVIOUS: dict[str, int | None] = {}  # study name -> the budget it held before this process's prepare_study


def stored_budget(study_name: str) -> int | None:
    """The budget the study held when :func:`prepare_study` resumed it here (None: it was new)."""
    return _PREVIOUS.get(study_name)


def budget_line(study_name: str, total: int, done: int) -> str | None:
    """The start line of a resumed study: the stored budget, the new one and what runs now
    (None for a new study: the sweep's header already gives its budget)."""
    before = stored_budget(study_name)
    if before is None:
        return None
    if total < done:
        return (
            f"  budget: n_trials={total} is below the {done} trials already done (stored budget {before}): nothing to run; "
            f"n_trials is the study's total, so n_trials={done + 1} or more adds trials"
        )
    change = f"stored budget {before}, now {total}" if before != total else f"budget {total} (as stored)"
    return f"  resuming: {change} · {done} trials done · {total - done} to run"


def register_worker(study: optuna.Study, storage_url: str | None) -> int:
    """This worker's number in the study (0 for the first), taken under the storage lock:
    it offsets the sampler seed, so no two workers draw the same points."""
    from ..store._optuna import storage_of

    with storage_lock(storage_url, storage_of(study)):
        number = int(study.user_attrs.get(ATTR_WORKERS, 0))
        study.set_user_attr(ATTR_WORKERS, number + 1)
    return number
