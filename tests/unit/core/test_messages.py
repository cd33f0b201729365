"""Trial numbers in one-line messages: consecutive ones as ranges, a long list counted."""

from __future__ import annotations

import pytest

from meminject.core._errors import number_ranges


@pytest.mark.parametrize(
    "numbers, text",
    [
        ([5], "5"),
        ([3, 4], "3, 4"),
        (range(3, 47), "3–46"),
        ([9, 1, 4, 7, 8, 1], "1, 4, 7–9"),
        ([2, 9, 3], "2, 3, 9"),
        ([1, 4, 7, 8, 9, 10], "1, 4, 7–10"),
        ([], ""),
    ],
)
def test_trial_numbers_read_as_ranges(numbers, text):
    assert number_ranges(numbers) == text


def test_past_the_limit_the_rest_is_counted_not_listed():
    numbers = [0, 2, 4, 6, 8, 20, 21, 22]
    assert number_ranges(numbers, limit=3) == "0, 2, 4, and 5 more"
