"""Batched evaluation against the plain per-prompt reference, and the head = layer identity."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_evaluator
from meminject.data._dataset import Dataset
from meminject.engine._evaluation import InjectionSpec
from omegaconf import OmegaConf
from reference import reference_answer_probs

MEMORY = OmegaConf.create({"type": "correct", "encoding": "unembed"})


def _memory(encoding: str):
    return OmegaConf.create({"type": "correct", "encoding": encoding})


def _check_against_reference(
    model, dataset: Dataset, spec: InjectionSpec, *, padding_side="right", max_batch_tokens=64, head=0, rel=1e-4
):
    evaluator = make_evaluator(model, dataset, max_batch_tokens=max_batch_tokens, padding_side=padding_side)
    table = evaluator.evaluate(spec, _memory(spec.encoding)).per_prompt
    for i, row in dataset.frame.iterrows():
        before, after = reference_answer_probs(
            model.bridge,
            row.obscure_sentence,
            row.answer,
            row.explicit_entity,
            layer=spec.layer,
            tweak=spec.tweak,
            encoding=spec.encoding,
            positions=spec.positions,
            head=head,
        )
        # the tiny model's probabilities are 1e-7 to 1e-3: relative only (agreement seen: ~5e-6;
        # SmolLM2's 30 layers ~3e-5, checked to rel=1e-3)
        assert table.answer_prob_before[i] == pytest.approx(before, rel=rel, abs=0)
        assert table.answer_prob_after[i] == pytest.approx(after, rel=rel, abs=0)
    return table


@pytest.mark.parametrize("encoding", ["unembed", "embed", "layer"])
@pytest.mark.parametrize("positions", ["all", "last"])
def test_batched_equals_reference_per_prompt_tiny(tiny, demo, encoding, positions):
    subset = Dataset(demo.name, demo.source, demo.frame.head(12))
    spec = InjectionSpec(layer=1, tweak=3.0, encoding=encoding, positions=positions)
    table = _check_against_reference(tiny, subset, spec)
    # the injection must actually move something, or this test could not fail
    assert np.abs(table.answer_prob_after - table.answer_prob_before).max() > 0


def test_paper_weights_batched_equals_reference(tiny_paper, demo):
    subset = Dataset(demo.name, demo.source, demo.frame.head(8))
    _check_against_reference(tiny_paper, subset, InjectionSpec(layer=2, tweak=5.0, encoding="unembed"))


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padding_side_does_not_change_results(tiny, demo, padding_side):
    subset = Dataset(demo.name, demo.source, demo.frame.head(16))
    spec = InjectionSpec(layer=0, tweak=2.0)
    unpadded = (
        make_evaluator(tiny, subset, max_batch_tokens=1).evaluate(spec, MEMORY).per_prompt
    )  # one prompt per batch
    padded = (
        make_evaluator(tiny, subset, max_batch_tokens=10_000, padding_side=padding_side)
        .evaluate(spec, MEMORY)
        .per_prompt
    )
    np.testing.assert_allclose(padded.answer_prob_after, unpadded.answer_prob_after, rtol=1e-4, atol=0)
    np.testing.assert_allclose(padded.answer_prob_before, unpadded.answer_prob_before, rtol=1e-4, atol=0)


def test_every_head_equals_the_layer_injection_through_the_literal_hook(tiny, demo):
    subset = Dataset(demo.name, demo.source, demo.frame.head(6))
    evaluator = make_evaluator(tiny, subset)
    layer_result = evaluator.evaluate(InjectionSpec(layer=1, tweak=4.0, site="layer"), MEMORY).per_prompt
    for head in range(tiny.n_heads):
        literal = evaluator.evaluate(
            InjectionSpec(layer=1, tweak=4.0, site="head", head=head, literal_hook=True), MEMORY
        ).per_prompt
        np.testing.assert_allclose(literal.answer_prob_after, layer_result.answer_prob_after, rtol=1e-4, atol=0)


def test_head_points_are_not_recomputed_per_head(tiny, demo):
    subset = Dataset(demo.name, demo.source, demo.frame.head(6))
    evaluator = make_evaluator(tiny, subset)
    results = [
        evaluator.evaluate(InjectionSpec(layer=2, tweak=1.5, site="head", head=h), MEMORY) for h in range(tiny.n_heads)
    ]
    assert evaluator.n_computed == 1
    assert all(r is results[0] for r in results)
    evaluator.evaluate(InjectionSpec(layer=2, tweak=1.5, site="layer"), MEMORY)
    assert evaluator.n_computed == 1


def test_clean_pass_is_computed_once(tiny, demo):
    evaluator = make_evaluator(tiny, Dataset(demo.name, demo.source, demo.frame.head(4)))
    first = evaluator.clean
    evaluator.evaluate(InjectionSpec(layer=0, tweak=1.0), MEMORY)
    assert evaluator.clean is first


def test_summary_metrics_follow_the_per_prompt_table(tiny, demo):
    result = make_evaluator(tiny, demo).evaluate(InjectionSpec(layer=1, tweak=4.0), MEMORY)
    table, summary = result.per_prompt, result.summary
    gain = table.answer_prob_after - table.answer_prob_before
    assert summary["mean_gain"] == pytest.approx(gain.mean())
    assert summary["median_gain"] == pytest.approx(gain.median())
    assert summary["frac_improved"] == pytest.approx((gain > 0).mean())
    assert summary["mean_prob_explicit"] == pytest.approx(table.answer_prob_explicit.mean())
    assert summary["mean_percent_increase"] == pytest.approx((gain / table.answer_prob_before * 100).mean())


@pytest.mark.slow
def test_smollm2_subset_batched_equals_reference(smol, shared_data):
    from meminject.data._dataset import read_prompt_csv

    frame = read_prompt_csv(shared_data / "handwritten_obscure_explicit_data.csv").head(6)
    subset = Dataset("handwritten", "shared", frame)
    for encoding in ("unembed", "layer"):
        _check_against_reference(
            smol,
            subset,
            InjectionSpec(layer=15, tweak=4.0, encoding=encoding),
            max_batch_tokens=256,
            head=None,
            rel=1e-3,
        )
