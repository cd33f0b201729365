"""The Python face (meminject.Session, run_sweep, best, figures): its docstring examples run,
a second point reuses the clean pass, and its numbers are the engine's own (not a second engine)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import meminject
from meminject.core._errors import ConfigError

TINY = ("model=tiny", "model.device=cpu", "data.limit=5", "tracking.enabled=false")


@pytest.fixture(scope="module")
def lab():
    return meminject.Session(*TINY)


def test_the_public_face_lists_its_names():
    for name in ("Session", "Best", "run_sweep", "best", "figures"):
        assert name in meminject.__all__ and getattr(meminject, name).__doc__, name


def test_a_second_point_reuses_the_clean_pass(monkeypatch):
    from meminject.engine._clean import CleanPass

    calls = []
    original = CleanPass._answer_probs
    monkeypatch.setattr(
        CleanPass, "_answer_probs", lambda self, *a, **k: calls.append(k.get("stage")) or original(self, *a, **k)
    )
    lab = meminject.Session(*TINY)
    lab.evaluate(layer=1, tweak=4)
    first = len(calls)
    assert first == 2  # the clean pass: the obscure prompts, then the explicit ones
    lab.evaluate(layer=2, tweak=8, encoding="embed")
    lab.evaluate_many([{"layer": 0, "tweak": t} for t in (1, 2)])
    lab.baseline()
    assert len(calls) == first  # no clean pass again


def test_a_point_is_the_engines_own_evaluation(lab):
    """The six-step chain of `meminject eval` gives the same per-prompt table."""
    from meminject.config import load_run_config
    from meminject.data import load_dataset
    from meminject.engine import Evaluator, InjectionSpec, load_model

    run = load_run_config([*TINY, "injection.layer=1", "injection.tweak=4", "memory.encoding=embed"])
    chain = Evaluator.from_config(load_model(run.model), load_dataset(run.data), run)
    expected = chain.evaluate(InjectionSpec.from_config(run), run.memory)
    table = lab.evaluate({"injection.layer": 1, "injection.tweak": 4}, encoding="embed")
    np.testing.assert_allclose(table["gain"], expected.per_prompt["gain"], rtol=1e-5, atol=1e-9)
    assert table.attrs["summary"]["mean_gain"] == pytest.approx(expected.summary["mean_gain"], rel=1e-5, abs=1e-9)
    base = lab.baseline()
    np.testing.assert_allclose(base["answer_prob_before"], expected.per_prompt["answer_prob_before"], rtol=1e-6)
    np.testing.assert_allclose(base["answer_prob_explicit"], expected.per_prompt["answer_prob_explicit"], rtol=1e-6)


def test_many_points_are_one_row_each_with_the_single_points_numbers(lab):
    points = [{"layer": 1, "tweak": t} for t in (2, 6)]
    many = lab.evaluate_many(points)
    assert many[["injection.layer", "injection.tweak"]].values.tolist() == [[1, 2], [1, 6]]
    for point, (_, row) in zip(points, many.iterrows()):
        assert row["mean_gain"] == pytest.approx(lab.evaluate(point).attrs["summary"]["mean_gain"], abs=1e-9)


@pytest.mark.parametrize(
    "point, says",
    [
        ({"model.name": "x"}, "the model, data and perf keys are the session's"),
        ({"layer": 7}, "injection.layer=7 is out of range for tiny"),
        ({"injection.colour": 1}, "unknown config key 'injection.colour'"),
    ],
)
def test_a_bad_point_is_one_clear_error(lab, point, says):
    with pytest.raises(ConfigError, match=says.replace(".", r"\.").replace("(", r"\(")):
        lab.evaluate(point)


def test_the_head_projector_of_a_dataset_row(lab, tmp_path):
    row = int(lab.dataset.frame.row.iloc[1])
    table = lab.heads(row=row, top=3, figure=tmp_path / "heads.png")
    assert len(table) == lab.model.n_layers * (lab.model.n_heads + 1)
    assert (tmp_path / "heads.png").stat().st_size > 0 and table["answer_rank"].notna().all()
    with pytest.raises(ConfigError, match="row=99999 is not in demo"):
        lab.heads(row=99999)


@pytest.mark.slow
def test_the_docstring_examples_run(tmp_path, monkeypatch):
    """Every example in meminject._api, on tiny: a Session, a 3-trial sweep, best and figures
    (its MLflow store, journal and outputs in a temporary folder)."""
    import meminject._api as api

    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(api, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 15 and result.failed == 0, result
    assert (tmp_path / "outputs" / "figures" / "doc" / "gain_heatmap.png").is_file()


def test_a_point_at_a_relative_depth_is_the_layer_it_names_in_the_sessions_model(lab):
    deepest = lab.evaluate(depth=1.0, tweak=4)
    last_layer = lab.evaluate(layer=lab.model.n_layers - 1, tweak=4)
    np.testing.assert_array_equal(deepest["answer_prob_after"], last_layer["answer_prob_after"])
    assert not np.array_equal(lab.evaluate(depth=0.0, tweak=4)["answer_prob_after"], deepest["answer_prob_after"])
