"""One exception base for every problem the user can fix.

The CLI catches :class:`MemInjectError` (and Hydra's override errors), prints a
single line ``meminject: error: <what is wrong> (<what to do>)`` and exits with
status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["MemInjectError", "ConfigError", "DataError", "ModelError"]


class MemInjectError(Exception):
    """A problem with the user's input, reported in one line."""


class ConfigError(MemInjectError):
    """A config value is invalid; the message names the key."""


class DataError(MemInjectError):
    """A dataset file is unreadable or violates the schema; names file, row, problem."""


class ModelError(MemInjectError):
    """A model name is unknown or its weights cannot be loaded."""
