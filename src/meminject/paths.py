"""Stable paths: project root, config folders, caches and the default MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["project_root", "conf_dir", "sweeps_dir", "cache_dir", "mlruns_dir"]


def project_root() -> Path:
    """The checkout root (``src/meminject/paths.py`` → two levels up), or $MEMINJECT_ROOT."""
    env = os.environ.get("MEMINJECT_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parents[2]


def conf_dir() -> Path:
    return project_root() / "conf"


def sweeps_dir() -> Path:
    return project_root() / "sweeps"


def cache_dir() -> Path:
    """Where converted model weights and downloaded datasets are kept ($MEMINJECT_CACHE)."""
    env = os.environ.get("MEMINJECT_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "meminject"
    base.mkdir(parents=True, exist_ok=True)
    return base


def mlruns_dir() -> Path:
    """The default tracking folder (git-ignored); created on demand."""
    path = project_root() / "mlruns"
    path.mkdir(parents=True, exist_ok=True)
    return path
