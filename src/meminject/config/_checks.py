"""Value checks shared by the config dataclasses: each failure is one ConfigError naming the key."""

from __future__ import annotations

import math
from typing import Any

from ..core._errors import ConfigError

__all__ = ["FLOAT16_MAX", "choice", "at_least", "finite", "seed"]

# float16 ends at 65,504: a τ or norm beyond it overflows to inf in a half-precision pass.
FLOAT16_MAX = 65504.0


def choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def at_least(key: str, value: float | int | None, low: float, what: str = "") -> None:
    if value is not None and not value >= low:
        raise ConfigError(f"{key}={value!r} must be >= {low:g}{what}")


SEED_MAX = 2**63 - 1  # torch.manual_seed takes at most a 64-bit integer; numpy no negative one


def seed(key: str, value: int | None) -> None:
    if value is not None and not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{key}={value!r} must be a seed between 0 and {SEED_MAX} (2**63 - 1)")


def finite(key: str, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number")
