"""Gemma 3 against an independent plain-transformers reference, on the tiny random Gemma.

The reference never touches TransformerLens: it builds the same seeded ``Gemma3ForCausalLM``,
adds τ·v with torch hooks on the Hugging Face modules (after ``post_attention_layernorm`` for
``attn_out``, after ``post_feedforward_layernorm`` for ``mlp_out``, into the decoder layer's input
for ``resid_pre``), one prompt at a time, and reads log P(answer) at the last position. The
fast path (batched, prefix cache, stacked trials, positions=last) must agree per prompt.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import compose
from meminject.config import with_values
from meminject.core import ConfigError
from meminject.data import load_dataset
from meminject.engine import Evaluator, InjectionSpec, load_model
from meminject.engine._tiny import build_tiny
from reference import hf_injected_logprob as _reference_logprob
from reference import hf_memory_vector as _reference_vector

GEMMA = [
    "model=tiny-gemma3",
    "model.device=cpu",
    "tracking.enabled=false",
    "data.limit=10",
    "injection.layer=1",
    "injection.tweak=3",
]


@pytest.fixture(scope="module")
def gemma():
    run = compose(*GEMMA)
    return run, load_model(run.model), load_dataset(run.data)


@pytest.fixture(scope="module")
def plain():
    """The same seeded tiny Gemma, as a plain Hugging Face model (no bridge, no weight processing)."""
    run = compose(*GEMMA)
    model, tokenizer = build_tiny(run.model.tiny, torch.float32)
    return model.eval(), tokenizer


def _fast_logprobs(gemma, point, **perf) -> tuple[np.ndarray, np.ndarray]:
    run, model, dataset = gemma
    run = dataclasses.replace(run, perf=dataclasses.replace(run.perf, **perf)) if perf else run
    evaluator = Evaluator.from_config(model, dataset, run)
    table = evaluator.evaluate(InjectionSpec.from_config(point), point.memory).per_prompt
    return np.log(table.answer_prob_before.to_numpy()), np.log(table.answer_prob_after.to_numpy())


@pytest.mark.parametrize("hook", ["attn_out", "mlp_out", "resid_pre"])
@pytest.mark.parametrize("encoding", ["unembed", "embed", "layer"])
def test_every_hook_and_encoding_equals_the_plain_transformers_reference_per_prompt(gemma, plain, hook, encoding):
    run, _, dataset = gemma
    point = with_values(run, {"injection.hook": hook, "memory.encoding": encoding})
    before, after = _fast_logprobs(gemma, point)
    model, tokenizer = plain
    for i, row in enumerate(dataset.frame.itertuples()):
        vector = _reference_vector(model, tokenizer, row.explicit_entity, encoding, point.injection.layer)
        kwargs = dict(layer=point.injection.layer, hook=hook, tweak=point.injection.tweak, positions="all")
        ref_before = _reference_logprob(model, tokenizer, row.obscure_sentence, row.answer, vector=None, **kwargs)
        ref_after = _reference_logprob(model, tokenizer, row.obscure_sentence, row.answer, vector=vector, **kwargs)
        assert before[i] == pytest.approx(ref_before, abs=2e-4), (i, "before")
        assert after[i] == pytest.approx(ref_after, abs=2e-4), (i, "after")
    assert np.abs(after - before).max() > 1e-2  # the injection moves log P: this test can fail


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_the_prefix_cache_resumes_sliding_and_full_attention_layers_exactly(gemma, layer):
    """Layers 0 and 1 use a 4-token sliding window and local rotary embeddings, layer 2 full
    attention and global ones: a resumed pass must hand each block its own."""
    run, _, _ = gemma
    point = with_values(run, {"injection.layer": layer, "injection.tweak": 5.0})
    cached = _fast_logprobs(gemma, point)[1]
    full = _fast_logprobs(gemma, point, prefix_cache_mb=0.0)[1]
    np.testing.assert_allclose(cached, full, rtol=0, atol=1e-4)


def test_positions_last_and_stacked_trials_agree_with_the_plain_path(gemma):
    run, model, dataset = gemma
    points = [with_values(run, {"injection.tweak": t, "injection.positions": "last"}) for t in (2.0, 6.0)]
    stacked = Evaluator.from_config(
        model, dataset, dataclasses.replace(run, perf=dataclasses.replace(run.perf, trials_per_forward=2))
    )
    together = stacked.evaluate_many([(InjectionSpec.from_config(p), p.memory) for p in points])
    for point, result in zip(points, together):
        alone = _fast_logprobs(gemma, point, prefix_cache_mb=0.0)[1]
        np.testing.assert_allclose(np.log(result.per_prompt.answer_prob_after.to_numpy()), alone, rtol=0, atol=1e-4)


def test_the_bridge_hooks_are_the_residual_contributions(gemma):
    """hook_attn_out and hook_mlp_out are the post-norm outputs on Gemma (what reaches the residual)."""
    _, model, _ = gemma
    hooks = model.bridge.hook_dict
    assert hooks["blocks.1.hook_attn_out"] is hooks["blocks.1.ln1_post.hook_out"]
    assert hooks["blocks.1.hook_mlp_out"] is hooks["blocks.1.ln2_post.hook_out"]
    assert model.sandwich_norms and model.n_kv_heads == 1


def test_embed_is_the_raw_embedding_row_not_the_scaled_input(gemma, plain):
    """Gemma multiplies token embeddings by sqrt(d_model) in its forward; memory.encoding=embed
    is the raw row of W_E (the same vector as unembed: the weights are tied)."""
    _, model, _ = gemma
    hf, _ = plain
    assert torch.equal(model.W_E, hf.model.embed_tokens.weight) and torch.equal(model.W_U, model.W_E.T)
    tokens = torch.tensor([[5, 9]])
    _, cache = model.bridge.run_with_cache(tokens)
    scaled = cache["hook_embed"][0]
    torch.testing.assert_close(scaled, model.W_E[tokens[0]] * model.d_model**0.5, rtol=1e-6, atol=0)


@pytest.mark.parametrize("site", ["head", "head_subspace"])
def test_head_sites_are_refused_on_sandwich_norms(gemma, site):
    run, model, _ = gemma
    spec = InjectionSpec.from_config(with_values(run, {"injection.site": site, "injection.head": 0}))
    with pytest.raises(ConfigError, match="post-attention norm comes after W_O"):
        spec.validate(model)


def test_paper_weights_are_refused_on_gemma():
    with pytest.raises(ConfigError, match="model.weights=paper is refused for tiny-gemma3"):
        load_model(compose(*GEMMA, "model.weights=paper").model)
