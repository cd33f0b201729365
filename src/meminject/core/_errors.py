"""One exception base for every problem the user can fix.

The CLI catches :class:`MemInjectError` (and Hydra's override errors), prints a
single line ``meminject: error: <what is wrong> (<what to do>)`` and exits with
status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "MemInjectError",
    "ConfigError",
    "DataError",
    "ModelError",
    "first_line",
    "error_line",
    "TrackingError",
    "number_ranges",
]


class MemInjectError(Exception):
    """A problem with the user's input, reported in one line."""


class ConfigError(MemInjectError):
    """A config value is invalid; the message names the key."""


class DataError(MemInjectError):
    """A dataset file is unreadable or violates the schema; names file, row, problem."""


class ModelError(MemInjectError):
    """A model name is unknown or its weights cannot be loaded."""


class TrackingError(MemInjectError):
    """The MLflow tracking store failed (stayed locked or unreachable, or lacks its database
    driver); the message names the operation, the redacted store URI and what to do."""


def number_ranges(numbers: Iterable[int], limit: int = 8) -> str:
    """Trial numbers for a one-line message, consecutive ones as ranges: ``3–46``, or
    ``1, 4, 7–9``; past ``limit`` ranges the rest is counted (``…, and 12 more``)."""
    spans: list[list[int]] = []
    for n in sorted(set(numbers)):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = [str(a) if a == b else f"{a}, {b}" if b == a + 1 else f"{a}–{b}" for a, b in spans[:limit]]
    rest = sum(b - a + 1 for a, b in spans[limit:])
    return ", ".join(text) + (f", and {rest} more" if rest else "")


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The first line of an error's message (its type name if it has none), cut to ``limit``:
    library errors can run to pages, and a user gets one line."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def error_line(exc: BaseException) -> str:
    """What ``meminject: error:`` prints: the first line, with any URL password hidden."""
    from ._redaction import redact

    return redact(first_line(exc, limit=2000))
