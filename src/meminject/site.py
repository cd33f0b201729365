"""What an injection site is, defined once.

A :class:`Site` is the part of a trial's config that says *where and how* a memory is
injected: model and weights, layer, head, site kind, positions, scale, τ, memory type and
encoding. It is read from the composed config through :class:`~meminject.evaluation.InjectionSpec`
(the engine's own view of the point), and everything that names a site derives from it:

* the ranked-site table's columns (:data:`COLUMNS`, :meth:`Site.record`),
* the Optuna trial attributes (:meth:`Site.attrs`, read back by :func:`from_attrs`),
* the overrides that re-run a site on held-out prompts (:func:`overrides_of`),
* the trial key that identifies the computed point (:func:`trial_key`).

MLflow params are the whole resolved config, flattened (:func:`meminject.config.flat_config`),
so nothing a reader needs is left to a hand-written list.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from .config import flat_config
from .memories import relevant_keys, site_pos
from .spec import InjectionSpec

__all__ = ["Site", "COLUMNS", "ATTR_PREFIX", "from_attrs", "overrides_of", "trial_key", "RESULT_FREE_SECTIONS"]

ATTR_PREFIX = "site."  # Optuna user attributes: site.<column>

# Config sections that never change a trial's numbers (where results go, how fast they come).
RESULT_FREE_SECTIONS = ("tracking.", "perf.", "output_dir")


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
    def from_config(cls, cfg: Any) -> "Site":
        spec = InjectionSpec.from_config(cfg)
        return cls(
            model=str(cfg.model.name), weights=str(cfg.model.weights), layer=spec.layer,
            head=spec.head if spec.site != "layer" else None, site=spec.site, positions=spec.positions,
            scale=spec.scale, tweak=spec.tweak, memory_type=spec.memory_type, memory_pos=site_pos(cfg.memory), encoding=spec.encoding,
        )

    def record(self) -> dict[str, Any]:
        """Column name -> value, in table order."""
        return {column: getattr(self, f.name) for column, f in zip(COLUMNS, fields(self))}

    def attrs(self) -> dict[str, Any]:
        """The Optuna user attributes that carry this site."""
        return {ATTR_PREFIX + k: v for k, v in self.record().items()}


# Table columns, named by the config key each field comes from.
COLUMNS: tuple[str, ...] = (
    "model", "weights", "injection.layer", "injection.head", "injection.site", "injection.positions",
    "injection.scale", "injection.tweak", "memory.type", "memory.pos", "memory.encoding",
)
assert len(COLUMNS) == len(fields(Site))


def from_attrs(user_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's site record from its Optuna user attributes ({} for a trial without one)."""
    return {k[len(ATTR_PREFIX):]: v for k, v in user_attrs.items() if k.startswith(ATTR_PREFIX)}


def _is_blank(value: Any) -> bool:
    return value is None or value == "-" or (isinstance(value, float) and math.isnan(value))


def overrides_of(row: Mapping[str, Any], *, with_model: bool) -> list[str]:
    """Config overrides that put a (table) site back into a config.

    ``model`` is a config group: it is only set when the sweep searched it (``with_model``);
    ``weights`` is then implied by the base config.
    """
    overrides = [f"model={row['model']}"] if with_model and not _is_blank(row.get("model")) else []
    for column in COLUMNS[2:]:
        value = row.get(column)
        if _is_blank(value):
            continue
        if column == "injection.head":
            value = int(value)
        overrides.append(f"{column}={value}")
    return overrides


def trial_key(cfg: Any) -> str:
    """What a trial computes, as canonical JSON: the result-bearing config with the injection
    replaced by its canonical point (every ``site=head`` point is its layer point) and without
    the memory keys its memory type ignores (the correct memory has no part of speech)."""
    spec = InjectionSpec.from_config(cfg).canonical()
    kept_memory = {f"memory.{k}" for k in relevant_keys(str(cfg.memory.type))}  # a key that cannot change this memory type's vectors is left out
    config = {
        k: v for k, v in flat_config(cfg).items()
        if not k.startswith(("injection.", *RESULT_FREE_SECTIONS)) and (not k.startswith("memory.") or k in kept_memory)
    }
    config["injection"] = [spec.layer, spec.tweak, spec.site, spec.head, spec.positions, spec.scale]
    return json.dumps(config, sort_keys=True, default=str)
