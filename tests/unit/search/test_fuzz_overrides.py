"""Property-based: random overrides of the real config keys never end in a traceback.

Every key of the composed config (tiny model) gets values of every kind: wrong types, huge,
tiny, negative, NaN, infinities, unicode, empty strings, Hydra syntax. Each example goes
through what ``meminject eval`` checks before its model loads (the typed config, the
injection's own checks, the dataset, loaded and split) and through ``meminject sweep``'s
pre-flight (the composed sweep, every axis value against the model's shape, the dataset).
Each must pass, or fail with a meminject error of one line; nothing is written to the
working directory either way. The URL keys are left out (they would reach for the network).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY
from meminject.config import compose_config, flat_config, load_run_config
from meminject.core._errors import MemInjectError, error_line
from meminject.data._dataset import load_dataset
from meminject.engine._evaluation import InjectionSpec
from meminject.search._settings import load_sweep
from meminject.search._study import preflight

# eval's checks: about 40 s on a loaded 2-core machine; a sweep's pre-flight composes the preset
# too, so it is slow-marked. MEMINJECT_FUZZ_EXAMPLES=N runs N of each, for a longer hunt.
EXAMPLES = int(os.environ.get("MEMINJECT_FUZZ_EXAMPLES", 50))
SWEEP_EXAMPLES = int(os.environ.get("MEMINJECT_FUZZ_EXAMPLES", 30))
_NETWORK = ("url", "uri")
KEYS = sorted(k for k in flat_config(compose_config(TINY)) if not k.endswith(_NETWORK))
SPECIAL = [
    "", " ", "nan", "NaN", "inf", "-inf", "1e308", "-1e308", "1e-308", "1e999", "0", "-0", "-1", "null", "None",
    "true", "false", "[]", "[1,2]", "{}", "'quoted'", "choice()", "interval(1, 1e308)", "range(0, all)", "all",
    "9" * 40, "é", "名前", "\U0001f600", "a=b", "../..", "/", "\t",
]  # fmt: skip
_FLOATS = st.floats(allow_nan=True, allow_infinity=True).map(lambda x: "nan" if math.isnan(x) else repr(x))
VALUES = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    _FLOATS,
    st.text(max_size=6),
)
OVERRIDES = st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3).map(
    lambda pairs: [f"{key}={value}" for key, value in pairs]
)


@contextlib.contextmanager
def _in_empty_folder():
    with tempfile.TemporaryDirectory() as folder:
        previous = os.getcwd()
        os.chdir(folder)
        try:
            yield folder
        finally:
            os.chdir(previous)


def _eval_checks(overrides: list[str]) -> None:
    cfg = load_run_config([*TINY, *overrides])
    InjectionSpec.from_config(cfg).validate()
    load_dataset(cfg.data)


def _sweep_checks(overrides: list[str]) -> None:
    spec, _ = load_sweep(["sweep=smoke", *TINY, *overrides])
    preflight(spec)


def _check(check, overrides: list[str]) -> None:
    with _in_empty_folder() as folder:
        try:
            check(overrides)
        except MemInjectError as exc:
            line = error_line(exc)
            assert line and "\n" not in line and "Traceback" not in line, (overrides, line)
        assert os.listdir(folder) == [], overrides  # nothing written before (or after) the checks


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=OVERRIDES)
def test_random_overrides_of_eval_pass_or_fail_in_one_line_and_write_nothing(overrides: list[str]) -> None:
    _check(_eval_checks, overrides)


@pytest.mark.slow
@settings(max_examples=SWEEP_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=OVERRIDES)
def test_random_overrides_of_sweep_pass_or_fail_in_one_line_and_write_nothing(overrides: list[str]) -> None:
    _check(_sweep_checks, overrides)


@pytest.mark.parametrize(
    "overrides",
    [["data.split_seed=-1"], ["data.file="], ["data.file=missing.csv"], ["seed="], ["seed=abc"]],
    ids=["seed", "folder", "missing", "sweep-seed-empty", "sweep-seed-text"],
)
def test_what_the_fuzz_found_is_one_line(overrides: list[str]) -> None:
    # Before: ValueError (numpy's "expected non-negative integer"), IsADirectoryError and
    # FileNotFoundError tracebacks from a sweep's pre-flight; and int()'s ValueError for a
    # sweep's own seed= (found by CI's fuzz run).
    with pytest.raises(MemInjectError) as caught:
        _sweep_checks(overrides)
    assert "\n" not in error_line(caught.value)
