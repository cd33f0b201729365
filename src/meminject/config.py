"""Compose the Hydra configs in ``conf/`` with command-line overrides, strictly."""

from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .paths import conf_dir

__all__ = ["compose_config", "config_options", "to_yaml"]


def config_options(group: str) -> list[str]:
    folder = conf_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose ``conf/config.yaml`` with overrides; every failure becomes one ConfigError line."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    except MissingConfigException as exc:
        group = next((g for g in ("model", "data", "memory", "injection", "tracking", "perf") if f"'{g}/" in str(exc) or f"{g}/" in str(exc)), None)
        if group:
            raise ConfigError(f"unknown {group} option ({_first_line(exc)}); choose from: {', '.join(config_options(group))}") from exc
        raise ConfigError(_first_line(exc)) from exc
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"bad override: {_first_line(exc)}") from exc
    finally:
        GlobalHydra.instance().clear()
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config does not resolve: {_first_line(exc)}") from exc
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"required config value(s) not set: {', '.join(missing)}")
    return cfg


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
