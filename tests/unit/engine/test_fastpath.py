"""The fast paths (prefix reuse, sparse prefix cache, stacked same-layer trials) against the
plain per-prompt reference and against the full-forward path, per prompt."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import make_evaluator
from meminject.data._dataset import Dataset
from meminject.engine._evaluation import Evaluator, InjectionSpec
from meminject.engine._prefix import choose_cached_layers
from reference import reference_answer_probs


def _memory(encoding: str):
    return OmegaConf.create({"type": "correct", "encoding": encoding})


PATHS = {
    "full_forward": dict(prefix_cache_bytes=0),
    "prefix_all_layers": dict(prefix_cache_bytes=2**30),
    "prefix_one_layer": dict(prefix_cache_bytes=1),  # resized below to exactly one layer (layer 0)
}


def _evaluator(model, dataset, path: str, **kwargs) -> Evaluator:
    evaluator = make_evaluator(model, dataset, max_batch_tokens=48, **PATHS[path], **kwargs)
    if path == "prefix_one_layer":
        evaluator.prefix.layers = [0]  # a budget for a single layer: trials start at 0 and recompute the rest
    return evaluator


def test_cached_layers_fit_the_budget():
    assert choose_cached_layers(30, 100, 10_000) == list(range(30))
    assert choose_cached_layers(30, 100, 1_000) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert choose_cached_layers(30, 100, 99) == []
    assert len(choose_cached_layers(30, 100, 700)) == 7


_REFERENCE: dict[tuple, tuple[float, float]] = {}  # the three paths share one reference per prompt and point


def _reference(model, row, layer: int, encoding: str, positions: str) -> tuple[float, float]:
    key = (id(model), row.obscure_sentence, row.answer, row.explicit_entity, layer, encoding, positions)
    if key not in _REFERENCE:
        _REFERENCE[key] = reference_answer_probs(
            model.bridge,
            row.obscure_sentence,
            row.answer,
            row.explicit_entity,
            layer=layer,
            tweak=3.0,
            encoding=encoding,
            positions=positions,
            head=None,
        )
    return _REFERENCE[key]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("encoding", ["unembed", "embed", "layer"])
@pytest.mark.parametrize("positions", ["all", "last"])
@pytest.mark.parametrize(
    "layer", [0, 2]
)  # the first layer (every later block runs on the injected stream) and the last
def test_each_path_equals_the_reference_per_prompt(tiny, demo, path, encoding, positions, layer):
    subset = Dataset(demo.name, demo.source, demo.frame.head(10))
    evaluator = _evaluator(tiny, subset, path)
    spec = InjectionSpec(layer=layer, tweak=3.0, encoding=encoding, positions=positions)
    table = evaluator.evaluate(spec, _memory(encoding)).per_prompt
    expected_start = {"full_forward": None, "prefix_all_layers": layer, "prefix_one_layer": 0}[path]
    assert (evaluator.prefix.start_layer(layer) if evaluator.prefix else None) == expected_start
    if evaluator.prefix is not None:  # positions=last: the last-token path when keys/values fit the budget
        fits = path == "prefix_all_layers"
        assert evaluator.prefix.kv_supported is (bool(fits) if positions == "last" else None)
    for i, row in subset.frame.iterrows():
        before, after = _reference(tiny, row, layer, encoding, positions)
        # the tiny model's probabilities are 1e-7 to 1e-3: relative only (agreement seen: ~5e-6)
        assert table.answer_prob_before[i] == pytest.approx(before, rel=1e-4, abs=0)
        assert table.answer_prob_after[i] == pytest.approx(after, rel=1e-4, abs=0)
    # the injection must move the answer's log-probability, or this test could not fail
    assert np.abs(table.answer_logprob_after - table.answer_logprob_before).max() > 1e-2


def test_literal_head_hook_through_the_prefix_equals_the_layer_site(tiny, demo):
    subset = Dataset(demo.name, demo.source, demo.frame.head(8))
    fast = _evaluator(tiny, subset, "prefix_all_layers")
    layer = fast.evaluate(InjectionSpec(layer=1, tweak=4.0), _memory("unembed")).per_prompt
    for head in range(tiny.n_heads):
        literal = fast.evaluate(
            InjectionSpec(layer=1, tweak=4.0, site="head", head=head, literal_hook=True), _memory("unembed")
        ).per_prompt
        np.testing.assert_allclose(literal.answer_prob_after, layer.answer_prob_after, rtol=1e-4, atol=0)


@pytest.mark.parametrize("weights", ["raw", "paper"])
@pytest.mark.parametrize("encoding", ["unembed", "layer"])
@pytest.mark.parametrize("positions", ["all", "last"])
def test_stacked_trials_equal_one_at_a_time(tiny, demo, tiny_paper, weights, encoding, positions):
    """Same-layer trials stacked in one forward (layers 0 and 2, three τ each) against each alone."""
    model = tiny if weights == "raw" else tiny_paper
    subset = Dataset(demo.name, demo.source, demo.frame.head(12))
    points = [
        (InjectionSpec(layer=layer, tweak=tweak, encoding=encoding, positions=positions), _memory(encoding))
        for layer in (0, 2)
        for tweak in (0.5, 2.0, 6.0)
    ]
    stacked = make_evaluator(model, subset, max_batch_tokens=64, trials_per_forward=5).evaluate_many(points)
    plain = make_evaluator(model, subset, max_batch_tokens=64, prefix_cache_bytes=0)
    assert len(stacked) == len(points)
    for (spec, memory), result in zip(points, stacked):
        single = plain.evaluate(spec, memory)
        np.testing.assert_allclose(
            result.per_prompt.answer_prob_after, single.per_prompt.answer_prob_after, rtol=1e-4, atol=0
        )
        # ranks among ~50k near-tied logits of a random model may swap neighbours
        assert np.abs(result.per_prompt.rank_after.to_numpy() - single.per_prompt.rank_after.to_numpy()).max() <= 2
        # a gain is a difference of probabilities: to 1e-4 of them (the mean gain itself may be ~1e-8)
        assert result.summary["mean_gain"] == pytest.approx(
            single.summary["mean_gain"], rel=0, abs=1e-4 * single.summary["mean_prob_before"]
        )


def test_stacking_does_not_recompute_cached_points(tiny, demo):
    evaluator = make_evaluator(tiny, Dataset(demo.name, demo.source, demo.frame.head(4)), trials_per_forward=4)
    points = [(InjectionSpec(layer=1, tweak=t), _memory("unembed")) for t in (1.0, 2.0, 1.0)]
    results = evaluator.evaluate_many(points)
    assert evaluator.n_computed == 2 and results[0] is results[2]
    evaluator.evaluate_many(points)
    assert evaluator.n_computed == 2


def test_cache_report_names_layers_and_size(tiny, demo):
    evaluator = make_evaluator(tiny, demo, max_batch_tokens=64)
    evaluator.clean
    assert evaluator.prefix.layers == list(range(tiny.n_layers))
    assert evaluator.prefix.nbytes == evaluator.prefix.bytes_per_layer * tiny.n_layers
    assert "all layers" in evaluator.prefix.describe()
    assert 0 <= evaluator.padded_fraction < 0.5


@pytest.mark.slow
@pytest.mark.parametrize("positions", ["all", "last"])
def test_smollm2_prefix_path_equals_reference(smol, shared_data, positions):
    from meminject.data._dataset import read_prompt_csv

    frame = read_prompt_csv(shared_data / "handwritten_obscure_explicit_data.csv").head(5)
    subset = Dataset("handwritten", "shared", frame)
    evaluator = make_evaluator(smol, subset, max_batch_tokens=256)
    for encoding in ("unembed", "embed", "layer"):
        table = evaluator.evaluate(
            InjectionSpec(layer=20, tweak=4.0, encoding=encoding, positions=positions), _memory(encoding)
        ).per_prompt
        assert evaluator.prefix.start_layer(20) == 20
        for i, row in frame.iterrows():
            before, after = reference_answer_probs(
                smol.bridge,
                row.obscure_sentence,
                row.answer,
                row.explicit_entity,
                layer=20,
                tweak=4.0,
                encoding=encoding,
                positions=positions,
                head=None,
            )
            assert table.answer_prob_before[i] == pytest.approx(before, abs=1e-5)
            assert table.answer_prob_after[i] == pytest.approx(after, abs=1e-5)


@pytest.mark.parametrize("positions", ["all", "last"])
def test_left_padding_fast_paths_equal_full_forwards(tiny, demo, positions):
    subset = Dataset(demo.name, demo.source, demo.frame.head(12))
    spec = InjectionSpec(layer=1, tweak=2.5, positions=positions)
    fast = make_evaluator(tiny, subset, max_batch_tokens=64, padding_side="left")
    plain = make_evaluator(tiny, subset, max_batch_tokens=1, prefix_cache_bytes=0)  # one unpadded prompt per forward
    got, want = fast.evaluate(spec, _memory("unembed")).per_prompt, plain.evaluate(spec, _memory("unembed")).per_prompt
    np.testing.assert_allclose(got.answer_prob_after, want.answer_prob_after, rtol=1e-4, atol=0)
    assert fast.padded_fraction > 0  # padding was really there
