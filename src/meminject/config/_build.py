"""From a composed Hydra config to a :class:`~._schema.RunConfig`: the only ``DictConfig`` reader.

:func:`build_run_config` checks every key once, by its dataclass's annotation: an unknown key,
a missing key and a value of the wrong type are each one :class:`ConfigError` naming the key.
:func:`load_run_config` composes once per process and distinct command line (a Hydra compose
costs ~0.2 s); :func:`with_values` sets sampled leaves on a built config without composing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, Mapping, Sequence

import numpy as np

from ..core._errors import ConfigError
from ._schema import SECTIONS, RunConfig, TinyConfig

__all__ = ["build_run_config", "load_run_config", "with_values", "needs_compose", "coerce"]

_NESTED = {"tiny": TinyConfig}
# Leaf keys a trial may set on a built config: nothing in conf/ interpolates them (root `seed`
# does feed data.seed and memory.seed, and a group choice swaps a whole section: both compose).
_SETTABLE_SECTIONS = ("injection", "memory")


def build_run_config(cfg: Any) -> RunConfig:
    """The typed config of a composed, resolved Hydra config (``DictConfig`` or plain dict)."""
    from omegaconf import DictConfig, OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return _build(RunConfig, container, "")


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"conf/{prefix.split('.')[0]}/" if prefix else "conf/config.yaml"
        raise ConfigError(f"unknown config key {prefix + unknown[0]!r}; the keys are those in {where}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name not in values:
            if f.default is not dataclasses.MISSING:
                continue
            raise ConfigError(f"required config value not set: {key}")
        value = values[f.name]
        section = SECTIONS.get(f.name) if not prefix else _NESTED.get(f.name)
        if section is not None and value is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key} must be a section of keys, not {value!r}")
            kwargs[f.name] = _build(section, value, f"{key}.")
        else:
            kwargs[f.name] = coerce(key, value, hints[f.name])
    return cls(**kwargs)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """``value`` as the annotated type (``int``, ``float``, ``bool``, ``str`` or a union with
    ``None``/``str``), or a ConfigError naming ``key``."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{key} must be set (it is null)")
    for option in options:
        if option is type(None):
            continue
        converted = _as(option, value)
        if converted is not _NO:
            return converted
    wanted = " or ".join(_WORDS[o] for o in options if o is not type(None))
    raise ConfigError(f"{key}={value!r} must be {wanted}")


_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


_NO = object()


def _as(kind: type, value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value) if kind is bool else _NO
    if kind is bool:
        return _NO
    if kind is int:
        if isinstance(value, (int, np.integer)):
            return int(value)
        return _NO
    if kind is float:
        if isinstance(value, (int, float, np.integer, np.floating)):
            return float(value)
        return _NO
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not (isinstance(value, float) and not math.isfinite(value)):
            return str(value)
        return _NO
    return _NO


def needs_compose(keys: Sequence[str]) -> bool:
    """Whether setting these keys takes a Hydra compose (a group choice, or a key others read)."""
    return not all(k.partition(".")[0] in _SETTABLE_SECTIONS and "." in k for k in keys)


def with_values(run: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """``run`` with ``section.leaf`` keys of the injection and memory sections set (each value
    coerced and checked as when built); see :func:`needs_compose` for the others."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, leaf = key.partition(".")
        if section not in _SETTABLE_SECTIONS or not leaf:
            raise ConfigError(
                f"{key}: only injection.* and memory.* keys are set on a built config (compose the others)"
            )
        cls = SECTIONS[section]
        if leaf not in _hints(cls):
            raise ConfigError(f"unknown config key {key!r}; the keys are those in conf/{section}/")
        sections.setdefault(section, {})[leaf] = coerce(key, value, _hints(cls)[leaf])
    return dataclasses.replace(run, **{s: dataclasses.replace(getattr(run, s), **v) for s, v in sections.items()})


_LOADED: dict[tuple[str, ...], RunConfig] = {}  # (local conf folder, *overrides) -> config


def load_run_config(overrides: Sequence[str] = ()) -> RunConfig:
    """Compose ``conf/`` with ``overrides`` and build the typed config, once per process for
    each distinct command line (the result is immutable, so sharing it is safe)."""
    from ..core._paths import user_conf_dir
    from ._compose import compose_config

    key = (str(user_conf_dir()), *overrides)  # ./conf of the working directory adds options
    if key not in _LOADED:
        if len(_LOADED) > 64:
            _LOADED.clear()
        _LOADED[key] = build_run_config(compose_config(list(overrides)))
    return _LOADED[key]
