"""Stable paths, one rule for each.

* **Configs and presets ship inside the package** (``meminject.conf``, ``meminject.presets``;
  in a checkout these are the top-level ``conf/`` and ``sweeps/``), so an installed meminject
  works from any directory. A ``./conf`` or ``./sweeps`` folder in the working directory
  *adds* options and presets (a packaged name wins over a local one of the same name).
* **Results go to the working directory**: ``./mlruns`` (the MLflow convention: the SQLite
  store, artifacts and the default Optuna journal) and ``./outputs`` (tables and figures).
* Caches (converted weights, downloads) go to ``$MEMINJECT_CACHE`` or ``~/.cache/meminject``.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from ._errors import ConfigError

__all__ = ["project_root", "conf_dir", "user_conf_dir", "preset_dirs", "cache_dir", "mlruns_dir", "outputs_dir"]


def project_root() -> Path:
    """The folder above the package (a checkout's root in development), or $MEMINJECT_ROOT."""
    env = os.environ.get("MEMINJECT_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parents[2]


def _package_dir(package: str, what: str) -> Path:
    try:
        folder = Path(str(importlib.resources.files(package)))
    except ModuleNotFoundError:
        folder = None
    if folder is None or not folder.is_dir():
        raise ConfigError(
            f"meminject's {what} folder ({package}) is missing from this installation; reinstall it: pip install --force-reinstall meminject (or pip install -e . in a checkout)"
        )
    return folder


def conf_dir() -> Path:
    """The packaged Hydra config folder (``conf/`` of the checkout)."""
    return _package_dir("meminject.conf", "config")


def _local(name: str, packaged: Path) -> Path | None:
    folder = Path.cwd() / name
    if folder.is_dir() and folder.resolve() != packaged.resolve():
        return folder.resolve()
    return None


def user_conf_dir() -> Path | None:
    """``./conf`` of the working directory, when it is not the packaged folder itself."""
    return _local("conf", conf_dir())


def preset_dirs() -> list[Path]:
    """Where ``sweep=NAME`` is looked up: the packaged presets, then ``./sweeps``."""
    packaged = _package_dir("meminject.presets", "sweep presets")
    local = _local("sweeps", packaged)
    return [packaged] + ([local] if local else [])


def cache_dir() -> Path:
    """Where converted model weights and downloaded datasets are kept ($MEMINJECT_CACHE)."""
    env = os.environ.get("MEMINJECT_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "meminject"
    base.mkdir(parents=True, exist_ok=True)
    return base


def mlruns_dir(create: bool = True) -> Path:
    """``./mlruns``: the default tracking store and study journal; created on demand
    (``create=False``: only named, e.g. for a URL that is checked before anything is written)."""
    path = Path.cwd() / "mlruns"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def outputs_dir(*parts: str) -> Path:
    """``./outputs/<parts>``: tables and figures; created on demand."""
    path = Path.cwd().joinpath("outputs", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
