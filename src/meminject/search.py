"""Moved: the sweep layer is the package :mod:`meminject.sweep` (this name warns and re-exports)."""

import warnings

from .sweep import *  # noqa: F401,F403
from .sweep import __all__  # noqa: F401

warnings.warn("meminject.search moved to meminject.sweep; import from there", DeprecationWarning, stacklevel=2)
