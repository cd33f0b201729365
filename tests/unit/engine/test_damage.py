"""Collateral damage: the KL of the rest of the next-token distribution, against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import make_evaluator
from meminject.data._dataset import Dataset
from meminject.engine._evaluation import InjectionSpec
from reference import reference_last_logits


def _direct_kl(clean: torch.Tensor, injected: torch.Tensor, answer: int) -> float:
    """KL(p̃_clean ‖ p̃_injected) in float64, the answer taken out and the rest renormalized."""
    keep = np.ones(clean.shape[0], dtype=bool)
    keep[answer] = False
    p = torch.softmax(clean.double(), -1).numpy()[keep]
    q = torch.softmax(injected.double(), -1).numpy()[keep]
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * (np.log(p) - np.log(q))))


@pytest.mark.parametrize("encoding", ["unembed", "embed"])
@pytest.mark.parametrize("cache_mb", [2048, 0])
def test_damage_equals_a_direct_kl_per_prompt(tiny, demo, encoding, cache_mb):
    subset = Dataset(demo.name, demo.source, demo.frame.head(10))
    evaluator = make_evaluator(tiny, subset, prefix_cache_bytes=cache_mb * 2**20)
    spec = InjectionSpec(layer=1, tweak=6.0, encoding=encoding)
    table = evaluator.evaluate(spec, OmegaConf.create({"type": "correct", "encoding": encoding})).per_prompt
    for i, row in subset.frame.iterrows():
        clean, injected = reference_last_logits(
            tiny.bridge, row.obscure_sentence, row.explicit_entity, layer=1, tweak=6.0, encoding=encoding
        )
        answer = int(tiny.bridge.to_tokens(row.answer, prepend_bos=False)[0][0])
        assert table.damage[i] == pytest.approx(_direct_kl(clean, injected, answer), abs=1e-6, rel=1e-4)
    assert (table.damage > 1e-4).all(), "τ=6 moves the rest of the distribution"


@pytest.mark.parametrize("positions", ["all", "last"])
def test_a_zero_strength_injection_does_no_damage(tiny, demo, positions):
    evaluator = make_evaluator(tiny, demo)
    result = evaluator.evaluate(
        InjectionSpec(layer=1, tweak=0.0, positions=positions),
        OmegaConf.create({"type": "correct", "encoding": "unembed"}),
    )
    assert np.abs(result.per_prompt.damage).max() <= 1e-9
    assert result.summary["mean_damage"] == pytest.approx(result.per_prompt.damage.mean())


@pytest.mark.parametrize(
    ("scale", "rel"), [(1e-4, 1e-3), (1e-3, 1e-4), (1e-2, 2e-5), (0.5, 1e-6), (3.0, 1e-6), (200.0, 1e-12)]
)
def test_the_fused_kl_agrees_with_the_definition_at_every_scale(scale, rel):
    """CleanRest.kl (one subtraction, expm1 and two weighted sums in float32) against rest_kl
    (two log-softmaxes in float64), per prompt; 200 nats overflow float32's expm1 and take the
    definition. Rows in a shuffled clean order, read back both as one slice and as a gather."""
    from meminject.engine._damage import CleanRest, rest_kl

    g = torch.Generator().manual_seed(0)
    n, vocab = 12, 4096
    clean = torch.randn(n, vocab, generator=g) * 3
    answer = torch.randint(0, vocab, (n,), generator=g)
    order = torch.randperm(n, generator=g)
    rest = CleanRest(
        [(order[:5], clean[order[:5]], answer[order[:5]]), (order[5:], clean[order[5:]], answer[order[5:]])], n
    )
    injected = clean + scale * torch.randn(n, vocab, generator=g)
    injected[torch.arange(n), answer] += 50.0  # the answer's own logit is out of the rest
    for prompts in (order[5:], torch.arange(n)):
        fused = rest.kl(prompts, injected[prompts])
        exact = rest_kl(clean[prompts], injected[prompts], answer[prompts])
        assert torch.allclose(fused, exact, rtol=rel, atol=0.0), (fused / exact - 1).abs().max()


def test_the_fused_kl_of_an_unchanged_distribution_is_exactly_zero():
    from meminject.engine._damage import CleanRest

    clean = torch.randn(4, 1000, generator=torch.Generator().manual_seed(1)) * 5
    answer = torch.tensor([3, 0, 999, 10])
    rest = CleanRest([(torch.arange(4), clean, answer)], 4)
    shifted = clean + 7.25  # a constant shift leaves the softmax unchanged
    assert (rest.kl(torch.arange(4), clean) == 0).all()
    assert (
        rest.kl(torch.arange(4), shifted).abs().max() < 1e-10
    )  # float32 rounding of the shift; a 1e-4 change gives ~1e-9
