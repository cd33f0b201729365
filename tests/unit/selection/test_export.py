"""``meminject export``'s choice of a site and its held-out record, on a hand-made table
(the whole command, sweep to plain transformers, is tests/e2e/test_e2e_export.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from meminject.core import ConfigError
from meminject.selection._export import _heldout_row, _pick
from meminject.tracking._schema import site_label

TABLE = pd.DataFrame(
    {
        "rank": [1, 2],
        "model": ["tiny", "tiny"],
        "weights": ["raw", "raw"],
        "injection.layer": [1, 2],
        "injection.head": ["-", "-"],
        "injection.site": ["layer", "layer"],
        "injection.positions": ["all", "all"],
        "injection.scale": ["relative", "relative"],
        "injection.tweak": [0.8, 1.6],
        "memory.type": ["correct", "correct"],
        "memory.pos": ["-", "-"],
        "memory.encoding": ["unembed", "embed"],
        "mean_gain": [0.2, 0.1],
        "best_trial": [3, 0],
    }
)


def test_a_site_is_picked_by_rank_or_by_its_label():
    assert _pick(TABLE, {})["best_trial"] == 3  # rank 1 by default
    assert _pick(TABLE, {"rank": "2"})["best_trial"] == 0
    label = site_label(TABLE.iloc[1].to_dict())
    assert label == "L2 τ1.6 embed correct"
    assert _pick(TABLE, {"site": label})["best_trial"] == 0


@pytest.mark.parametrize(
    "settings, says",
    [
        ({"rank": "3"}, "rank=3: the study has 2 sites (rank 1..2)"),
        ({"rank": "first"}, "rank='first' must be a whole number"),
        ({"site": "L9 τ1 embed correct"}, "site='L9 τ1 embed correct' is not a site of this study"),
    ],
)
def test_a_site_that_is_not_there_is_one_clear_error(settings, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")):
        _pick(TABLE, settings)


def test_the_held_out_record_is_the_judged_row_of_the_same_site(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _heldout_row("s", TABLE.iloc[0]) is None  # best has not judged the study
    report = TABLE.drop(columns=["mean_gain"]).assign(heldout_gain=[0.05, -0.01], verdict=["holds", "hurts"])
    (tmp_path / "outputs" / "best").mkdir(parents=True, exist_ok=True)
    report.iloc[::-1].to_csv(tmp_path / "outputs" / "best" / "s-heldout.csv", index=False)
    assert _heldout_row("s", TABLE.iloc[0])["verdict"] == "holds"
    assert _heldout_row("s", TABLE.iloc[1])["heldout_gain"] == -0.01
    other = TABLE.iloc[0].copy()
    other["injection.tweak"] = 0.5
    assert _heldout_row("s", other) is None
