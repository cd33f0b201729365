"""Search spaces in the grammar of Hydra's Optuna sweeper, turned into Optuna distributions.

Axes are written as Hydra sweep overrides over any config key::

    injection.layer: range(0, all)             # every layer: 0..n_layers-1 ("all" = the model's count)
    injection.tweak: interval(1, 15)           # continuous τ
    injection.tweak: tag(log, interval(0.1, 20))  # log-uniform for samplers
    injection.tweak: logrange(0.005, 1, 9)     # 9 log-spaced values, both ends included (grids)
    injection.head:  int(interval(0, all))     # integers, both ends included
    memory.encoding: choice(unembed, embed, layer)

``range(start, stop[, step])`` excludes ``stop`` as Python's range does, in every sampler
(Hydra's Optuna plugin includes it for TPE; meminject does not). ``all`` is resolved per
model: the number of layers for ``injection.layer``, of heads for ``injection.head``.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import optuna.distributions as od

from ..core._errors import ConfigError, first_line

__all__ = ["Axis", "SearchSpace", "parse_axis", "parse_space", "log_values"]

_RELATIVE_KEYS = {"injection.layer": "n_layers", "injection.head": "n_heads"}


@dataclass(frozen=True)
class Axis:
    """One searched config key and its Optuna distribution."""

    key: str
    expression: str
    distribution: od.BaseDistribution

    @property
    def discrete_values(self) -> list[Any] | None:
        d = self.distribution
        if isinstance(d, od.CategoricalDistribution):
            return list(d.choices)
        if isinstance(d, od.IntDistribution) and not d.log:
            return list(range(d.low, d.high + 1, d.step))
        return None


def _substitute_all(key: str, expression: str, sizes: Mapping[str, int]) -> str:
    """Replace the word ``all`` by the model's size for layer/head axes."""
    if not re.search(r"\ball\b", expression):
        return expression
    if key not in _RELATIVE_KEYS:
        raise ConfigError(f"{key}={expression}: 'all' is only meaningful for {', '.join(_RELATIVE_KEYS)}")
    size = int(sizes[_RELATIVE_KEYS[key]])
    if expression.strip() == "all":
        return f"range(0,{size})"
    head = expression.split("(", 1)[0].strip()
    # range() excludes its stop; interval() includes its end: "all" means "through the last one".
    value = size if head == "range" else size - 1
    return re.sub(r"\ball\b", str(value), expression)


def _check_bound(key: str, values: list[Any], sizes: Mapping[str, int], expression: str) -> None:
    if key not in _RELATIVE_KEYS:
        return
    size = int(sizes[_RELATIVE_KEYS[key]])
    what = "layer" if key == "injection.layer" else "head"
    for value in values:
        if not isinstance(value, int) or not 0 <= value < size:
            raise ConfigError(
                f"{key}={expression}: {what} {value} is out of range for {sizes.get('model', 'the model')} ({what}s 0..{size - 1})"
            )


_LOGRANGE = re.compile(r"^\s*logrange\s*\((.*)\)\s*$")


def log_values(low: float, high: float, count: int) -> list[float]:
    """``count`` log-spaced values from ``low`` to ``high``, both included, each rounded to 4
    significant digits (grid cells and table columns read 0.0133, not 0.013335214321633242)."""
    if count == 1:
        return [float(f"{low:.4g}")]
    ratio = (high / low) ** (1.0 / (count - 1))
    return [float(f"{low * ratio**i:.4g}") for i in range(count)]


def _logrange(key: str, expression: str, body: str) -> Axis:
    """``logrange(low, high, count)``: meminject's own grammar (Hydra's has no log grid)."""
    parts = [p.strip() for p in body.split(",")]
    usage = f"{key}={expression}: use logrange(LOW, HIGH, COUNT), e.g. logrange(0.005, 1, 9) (COUNT log-spaced values, both ends included)"
    if len(parts) != 3:
        raise ConfigError(usage)
    try:
        low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError as exc:
        raise ConfigError(usage) from exc
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0 or high < low or count < 1:
        raise ConfigError(f"{key}={expression}: a log range needs 0 < LOW <= HIGH and COUNT >= 1")
    values = list(dict.fromkeys(log_values(low, high, count)))
    return Axis(key, str(expression), od.CategoricalDistribution(values))


def parse_axis(key: str, expression: str, sizes: Mapping[str, int] | None = None) -> Axis:
    """Parse ``expression`` (Hydra sweep grammar, or ``logrange(...)``) for config ``key`` into an Axis."""
    match = _LOGRANGE.match(str(expression))
    if match:
        return _logrange(key, str(expression), match.group(1))
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from hydra.errors import HydraException

    sizes = dict(sizes or {})
    text = _substitute_all(key, str(expression), sizes) if sizes else str(expression)
    try:
        override = OverridesParser.create().parse_overrides([f"{key}={text}"])[0]
    except HydraException as exc:
        raise ConfigError(f"{key}={expression}: not a search-space expression ({first_line(exc)})") from exc
    if not override.is_sweep_override():
        raise ConfigError(
            f"{key}={expression}: not a search-space expression (use choice(...), range(...), interval(...))"
        )
    sweep = override.value()
    tags = set(getattr(sweep, "tags", set()) or set())
    unknown_tags = tags - {"log"}
    if unknown_tags:
        raise ConfigError(f"{key}={expression}: unknown tag(s) {', '.join(sorted(unknown_tags))} (only 'log')")
    if isinstance(sweep, ChoiceSweep):
        choices = list(sweep.list)
        if not choices:
            raise ConfigError(f"{key}={expression}: choice() needs at least one value")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{key}={expression}: choice() lists a value twice")
        if sizes:
            _check_bound(key, choices, sizes, expression)
        return Axis(key, str(expression), od.CategoricalDistribution(choices))
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        if step == 0 or (stop - start) * step <= 0:
            raise ConfigError(f"{key}={expression}: empty range (start {start}, stop {stop}, step {step})")
        if all(isinstance(v, int) for v in (start, stop, step)):
            values = list(range(start, stop, step))
            if sizes:
                _check_bound(key, values, sizes, expression)
            if step > 0:
                return Axis(key, str(expression), od.IntDistribution(values[0], values[-1], step=step))
            return Axis(key, str(expression), od.CategoricalDistribution(values))
        count = math.ceil((stop - start) / step - 1e-9)
        values = [round(start + i * step, 12) for i in range(count)]
        return Axis(key, str(expression), od.CategoricalDistribution(values))
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ConfigError(f"{key}={expression}: interval bounds must be finite")
        if low > high:
            raise ConfigError(f"{key}={expression}: inverted interval (low {low} > high {high})")
        log = "log" in tags
        if log and low <= 0:
            raise ConfigError(f"{key}={expression}: a log interval needs low > 0")
        if isinstance(low, int) and isinstance(high, int):
            if sizes:
                _check_bound(key, [low, high], sizes, expression)
            return Axis(key, str(expression), od.IntDistribution(low, high, log=log))
        return Axis(key, str(expression), od.FloatDistribution(float(low), float(high), log=log))
    raise ConfigError(f"{key}={expression}: unsupported sweep type {type(sweep).__name__}")


@dataclass
class SearchSpace:
    axes: list[Axis]

    @property
    def keys(self) -> list[str]:
        return [a.key for a in self.axes]

    @property
    def distributions(self) -> dict[str, od.BaseDistribution]:
        return {a.key: a.distribution for a in self.axes}

    def grid(self) -> list[dict[str, Any]]:
        """Every point of an all-discrete space, in a stable order."""
        values = []
        for axis in self.axes:
            discrete = axis.discrete_values
            if discrete is None:
                raise ConfigError(
                    f"the grid sampler needs discrete axes: {axis.key}={axis.expression} is continuous (use choice() or range())"
                )
            values.append(discrete)
        return [dict(zip(self.keys, combo)) for combo in itertools.product(*values)]

    def signature(self) -> dict[str, str]:
        """What identifies the space in a stored study (to refuse a changed space under the same name)."""
        return {a.key: od.distribution_to_json(a.distribution) for a in self.axes}


def parse_space(params: Mapping[str, Any], sizes: Mapping[str, int] | None = None) -> SearchSpace:
    return SearchSpace([parse_axis(str(k), str(v), sizes) for k, v in params.items()])
