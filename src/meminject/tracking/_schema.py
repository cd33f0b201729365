"""The record schema, defined once: what an injection site is, and every key meminject stores.

A :class:`Site` is the part of a trial's config that says *where and how* a memory is
injected: model and weights, layer, head, site kind, positions, scale, τ, memory type and
encoding. It is read from the typed run config (:class:`~meminject.config.RunConfig`), and
everything that names a site derives from it:

* the ranked-site table's columns (:data:`COLUMNS`, :meth:`Site.record`),
* the Optuna trial attributes (:meth:`Site.attrs`, read back by :func:`from_attrs`),
* the short label of run names, progress and verdict lines (:func:`site_label`),
* the config that re-runs a site on held-out prompts (:func:`site_config`),
* the trial key that identifies the computed point (:func:`meminject.config.trial_key`).

MLflow params are the whole resolved config, flattened (:func:`meminject.config.flat_config`),
so nothing a reader needs is left to a hand-written list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

from ..config import RESULT_FREE_SECTIONS, RunConfig, load_run_config, site_pos, trial_key, with_values

__all__ = [
    "Site",
    "COLUMNS",
    "ATTR_PREFIX",
    "from_attrs",
    "site_config",
    "site_label",
    "trial_key",
    "RESULT_FREE_SECTIONS",
    "ATTR_SPEC",
    "ATTR_PARENT",
    "ATTR_HEARTBEAT",
    "ATTR_SURPLUS",
    "ATTR_WORKERS",
    "ATTR_SPACE",
    "ATTR_PHASE",
    "ATTR_ROUND",
    "ATTR_KEY",
    "ATTR_PROMPT_VALUES",
    "TAG_ROLE",
    "TAG_STUDY",
    "TAG_TRIAL_NUMBER",
    "TAG_COMMAND",
    "TAG_SAMPLER",
    "TAG_SWEEP",
    "TAG_WORKER",
    "TAG_STATE",
    "TAG_FAILURE",
    "TAG_RECONCILED",
    "TAG_VERDICTS",
    "TAG_HOLDS",
    "TAG_BEST_PARAMS",
]

# Optuna user attributes of a trial: its site record, one attribute per column (site.<column>),
ATTR_PREFIX = "site."
ATTR_KEY = "meminject.key"  # the computed point (config.trial_key)
ATTR_PROMPT_VALUES = "meminject.prompt_values"  # {row: per-prompt objective value}, as JSON (pruning)
# ... and of a study.
ATTR_SPEC = "meminject.sweep"  # the SweepSpec, as JSON
ATTR_PARENT = "meminject.mlflow_parent_run_id"  # the study's one MLflow parent run
ATTR_HEARTBEAT = "meminject.heartbeat"  # [interval, grace] seconds, for every worker
ATTR_SURPLUS = "meminject.surplus"  # a trial given back unrun (over budget, or a duplicate point)
ATTR_WORKERS = "meminject.workers"  # how many workers have registered (seeds their samplers)
ATTR_SPACE = "meminject.space"  # the search space's signature (a changed space is refused)
ATTR_PHASE = "meminject.phase"  # sampler=adaptive: the trial's phase (coarse, refine, grow)
ATTR_ROUND = "meminject.round"  # sampler=adaptive: its round (0: coarse)

# MLflow tags of a run.
TAG_ROLE = "meminject.role"  # sweep (a study's parent run) | trial
TAG_STUDY = "meminject.study"
TAG_TRIAL_NUMBER = "meminject.trial_number"
TAG_COMMAND = "meminject.command"  # eval | inspect
TAG_SAMPLER = "meminject.sampler"
TAG_SWEEP = "meminject.sweep"  # the preset's name
TAG_WORKER = "meminject.worker"
TAG_STATE = "meminject.state"  # PRUNED (MLflow has no such status)
TAG_FAILURE = "meminject.failure"
TAG_RECONCILED = "meminject.reconciled"  # a run written on resume from the study
TAG_VERDICTS = "meminject.verdicts"  # best's held-out verdict lines, on the parent run
TAG_HOLDS = "meminject.holds"  # how many sites hold
TAG_BEST_PARAMS = "meminject.best_params"


@dataclass(frozen=True)
class Site:
    """One injection site; field order is the table's column order."""

    model: str
    weights: str
    layer: int
    head: int | None  # None for site=layer (a layer site has no head)
    site: str
    positions: str
    scale: str
    tweak: float
    memory_type: str
    memory_pos: str | None  # the part of speech of a pos control (None for other memory types)
    encoding: str

    @classmethod
    def from_config(cls, run: RunConfig) -> "Site":
        inj, mem = run.injection, run.memory
        return cls(
            model=run.model.name,
            weights=run.model.weights,
            layer=inj.layer,
            head=inj.head if inj.site != "layer" else None,
            site=inj.site,
            positions=inj.positions,
            scale=inj.scale,
            tweak=inj.tweak,
            memory_type=mem.type,
            memory_pos=site_pos(mem),
            encoding=mem.encoding,
        )

    @property
    def label(self) -> str:
        """The short name of runs, progress lines and verdicts (:func:`site_label`)."""
        return site_label(self.record())

    def record(self) -> dict[str, Any]:
        """Column name -> value, in table order."""
        return {column: getattr(self, f.name) for column, f in zip(COLUMNS, fields(self))}

    def attrs(self) -> dict[str, Any]:
        """The Optuna user attributes that carry this site."""
        return {ATTR_PREFIX + k: v for k, v in self.record().items()}


# Table columns, named by the config key each field comes from.
COLUMNS: tuple[str, ...] = (
    "model",
    "weights",
    "injection.layer",
    "injection.head",
    "injection.site",
    "injection.positions",
    "injection.scale",
    "injection.tweak",
    "memory.type",
    "memory.pos",
    "memory.encoding",
)
assert len(COLUMNS) == len(fields(Site))


def from_attrs(user_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's site record from its Optuna user attributes ({} for a trial without one)."""
    return {k[len(ATTR_PREFIX) :]: v for k, v in user_attrs.items() if k.startswith(ATTR_PREFIX)}


def _is_blank(value: Any) -> bool:
    return value is None or value == "-" or (isinstance(value, float) and math.isnan(value))


def site_config(
    overrides: Sequence[str], row: Mapping[str, Any], *, with_model: bool, extra: Sequence[str] = ()
) -> RunConfig:
    """The config that re-runs a (table) site: the sweep's fixed overrides (and ``extra``), the
    site's model when the sweep searched it (``with_model``: a config group, so a compose, once
    per model), then the site's injection and memory columns set on it."""
    model = [f"model={row['model']}"] if with_model and not _is_blank(row.get("model")) else []
    base = load_run_config([*overrides, *model, *extra])
    values = {}
    for column in COLUMNS[2:]:
        value = row.get(column)
        if not _is_blank(value):
            values[column] = int(value) if column == "injection.head" else _plain(value)
    return with_values(base, values)


def _plain(value: Any) -> Any:
    """A table cell as a Python scalar (pandas hands numpy types)."""
    return value.item() if hasattr(value, "item") else value


def site_label(site: Mapping[str, Any]) -> str:
    """A site record (table columns, :data:`meminject.site.COLUMNS`) as a short run name:
    ``L24 τ8.32 embed correct`` (``h3`` for a head site, ``pos/noun`` for a pos control)."""
    layer, head, tweak = site.get("injection.layer"), site.get("injection.head"), site.get("injection.tweak")
    parts = [f"L{layer}"]
    if head not in (None, "-") and str(site.get("injection.site", "layer")) != "layer" and head == head:
        parts.append(f"h{int(head)}")
    if tweak is not None:
        parts.append(f"τ{float(tweak):.3g}")
    kind = str(site.get("memory.type", "correct"))
    pos = site.get("memory.pos")
    if pos not in (None, "-") and pos == pos:
        kind += f"/{pos}"
    parts += [str(site.get("memory.encoding", "")), kind]
    return " ".join(p for p in parts if p)
