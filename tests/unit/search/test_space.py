"""The search-space grammar: each form, its bounds, and its refusals."""

from __future__ import annotations

import optuna.distributions as od
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meminject.core._errors import ConfigError
from meminject.search._space import parse_axis, parse_space

SIZES = {"n_layers": 30, "n_heads": 9, "model": "smollm2-135m"}


def test_range_excludes_stop_like_python():
    axis = parse_axis("injection.layer", "range(0, 12)", SIZES)
    assert axis.discrete_values == list(range(12))
    assert axis.distribution == od.IntDistribution(0, 11)


def test_range_with_step_and_float_range():
    assert parse_axis("injection.layer", "range(0, 30, 5)", SIZES).discrete_values == [0, 5, 10, 15, 20, 25]
    assert parse_axis("injection.tweak", "range(1, 2, 0.25)").discrete_values == [1, 1.25, 1.5, 1.75]


def test_all_is_resolved_per_model():
    assert parse_axis("injection.layer", "range(0, all)", SIZES).discrete_values == list(range(30))
    assert parse_axis("injection.layer", "all", {"n_layers": 3, "n_heads": 4}).discrete_values == [0, 1, 2]
    assert parse_axis("injection.head", "int(interval(0, all))", SIZES).distribution == od.IntDistribution(0, 8)


def test_choice_interval_int_and_log():
    assert parse_axis("memory.encoding", "choice(unembed, embed, layer)").distribution == od.CategoricalDistribution(
        ["unembed", "embed", "layer"]
    )
    assert parse_axis("injection.tweak", "interval(1, 15)").distribution == od.FloatDistribution(1.0, 15.0)
    assert parse_axis("injection.tweak", "int(interval(1, 15))").distribution == od.IntDistribution(1, 15)
    assert parse_axis("injection.tweak", "tag(log, interval(0.1, 20))").distribution == od.FloatDistribution(
        0.1, 20.0, log=True
    )


@pytest.mark.parametrize(
    "key, expression, message",
    [
        ("injection.tweak", "interval(5, 1)", "inverted interval"),
        ("injection.layer", "range(0, 40)", "layer 30 is out of range"),
        ("injection.layer", "choice(1, 31)", "layer 31 is out of range"),
        ("injection.head", "range(0, 10)", "head 9 is out of range"),
        ("injection.tweak", "interval(1, ", "not a search-space expression"),
        ("injection.tweak", "3", "not a search-space expression"),
        ("injection.tweak", "range(5, 1)", "empty range"),
        ("injection.tweak", "tag(log, interval(0, 1))", "log interval needs low > 0"),
        ("injection.tweak", "tag(fast, interval(1, 2))", "unknown tag"),
        ("memory.encoding", "choice(all)", "only meaningful"),
        ("memory.encoding", "choice(embed, embed)", "twice"),
    ],
)
def test_bad_expressions_are_refused(key, expression, message):
    with pytest.raises(ConfigError, match=message):
        parse_axis(key, expression, SIZES)


def test_grid_needs_discrete_axes():
    with pytest.raises(ConfigError, match="grid sampler needs discrete axes"):
        parse_space({"injection.tweak": "interval(1, 2)"}).grid()
    grid = parse_space({"injection.layer": "range(0, 2)", "memory.encoding": "choice(a, b)"}).grid()
    assert grid == [
        {"injection.layer": 0, "memory.encoding": "a"},
        {"injection.layer": 0, "memory.encoding": "b"},
        {"injection.layer": 1, "memory.encoding": "a"},
        {"injection.layer": 1, "memory.encoding": "b"},
    ]


@settings(max_examples=60, deadline=None)
@given(start=st.integers(-5, 20), stop=st.integers(-5, 40), step=st.integers(1, 5))
def test_range_property_matches_python_range(start, stop, step):
    expected = list(range(start, stop, step))
    if not expected:
        with pytest.raises(ConfigError):
            parse_axis("injection.tweak", f"range({start}, {stop}, {step})")
        return
    assert parse_axis("injection.tweak", f"range({start}, {stop}, {step})").discrete_values == expected


@settings(max_examples=60, deadline=None)
@given(low=st.floats(-100, 100, allow_nan=False), high=st.floats(-100, 100, allow_nan=False))
def test_interval_property(low, high):
    expression = f"interval({low!r}, {high!r})"
    if low > high:
        with pytest.raises(ConfigError, match="inverted"):
            parse_axis("injection.tweak", expression)
    else:
        d = parse_axis("injection.tweak", expression).distribution
        assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))
