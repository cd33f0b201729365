"""memory=shuffled (another prompt's memory) and the memory-specific gain (metric.specific).

The derangement's guarantees, and the stacked shuffled copy against plain separate evaluations
and the plain reference, per prompt, on every encoding, hook, scale and position choice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import make_evaluator
from meminject.core._errors import DataError
from meminject.data._dataset import Dataset
from meminject.engine._evaluation import InjectionSpec
from meminject.engine._memories import memory_texts, shuffled_sources
from reference import reference_answer_probs


def _memory(kind: str = "correct", encoding: str = "unembed", seed: int = 0, draw: int = 0):
    return OmegaConf.create({"type": kind, "encoding": encoding, "seed": seed, "draw": draw})


def _valid(texts: list[str], sources: list[int]) -> bool:
    return sorted(sources) == list(range(len(texts))) and all(
        j != i and texts[j] != texts[i] for i, j in enumerate(sources)
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abcdefgh"), min_size=2, max_size=40), st.integers(0, 2**32))
def test_the_derangement_never_gives_a_prompt_its_own_memory_nor_one_of_the_same_text(texts, seed):
    largest = max(texts.count(t) for t in set(texts))
    if 2 * largest > len(texts):  # no such assignment exists: one line that says why
        with pytest.raises(DataError, match="memory.type=shuffled needs prompts whose memories differ"):
            shuffled_sources(texts, _memory(seed=seed))
        return
    sources = shuffled_sources(texts, _memory(seed=seed))
    assert _valid(texts, sources)
    assert sources == shuffled_sources(texts, _memory(seed=seed))  # seeded: the same again


def test_the_derangement_is_seeded_and_varies_with_the_seed_and_draw():
    texts = [f"entity {i}" for i in range(30)]
    by_seed = {tuple(shuffled_sources(texts, _memory(seed=s))) for s in range(5)}
    by_draw = {tuple(shuffled_sources(texts, _memory(draw=d))) for d in range(5)}
    assert len(by_seed) == 5 and len(by_draw) == 5
    # every prompt receives some other prompt's memory, and every memory is given once
    for sources in by_seed:
        assert _valid(texts, list(sources))


def test_shuffled_memory_texts_come_from_other_rows_of_the_same_frame(demo):
    frame = demo.frame
    texts = memory_texts(frame, _memory("shuffled"))
    entities = frame["explicit_entity"].tolist()
    assert sorted(texts) == sorted(entities)  # a permutation of the part's own memories
    assert all(t != e for t, e in zip(texts, entities))


def _subset(dataset, n: int) -> Dataset:
    return Dataset(dataset.name, dataset.source, dataset.frame.head(n))


CASES = [
    # (encoding, hook, scale, positions): every encoding, hook, scale and position choice at least once
    ("unembed", "attn_out", "absolute", "all"),
    ("embed", "mlp_out", "relative", "all"),
    ("layer", "resid_pre", "absolute", "last"),
    ("unembed", "resid_pre", "relative", "last"),
    ("layer", "attn_out", "relative", "all"),
    ("embed", "attn_out", "absolute", "last"),
]


@pytest.mark.parametrize("path", ["prefix", "full_forward"])
@pytest.mark.parametrize("encoding,hook,scale,positions", CASES)
def test_the_stacked_shuffled_copy_equals_a_separate_shuffled_evaluation_per_prompt(
    tiny, demo, encoding, hook, scale, positions, path
):
    evaluator = make_evaluator(
        tiny, demo, max_batch_tokens=64, prefix_cache_bytes=0 if path == "full_forward" else 2**30
    )
    for layer in (0, tiny.n_layers - 1):  # an early layer as well as the last
        spec = InjectionSpec(layer=layer, tweak=3.0, encoding=encoding, hook=hook, scale=scale, positions=positions)
        paired = evaluator.evaluate(spec, _memory(encoding=encoding), specific=True).per_prompt
        correct = evaluator.evaluate(spec, _memory(encoding=encoding)).per_prompt
        shuffled = evaluator.evaluate(
            InjectionSpec(
                layer=layer,
                tweak=3.0,
                encoding=encoding,
                hook=hook,
                scale=scale,
                positions=positions,
                memory_type="shuffled",
            ),
            _memory("shuffled", encoding),
        ).per_prompt
        # the copy rides in the same forward: both lanes match their lone evaluations, prompt by prompt
        np.testing.assert_allclose(paired.answer_prob_after, correct.answer_prob_after, rtol=1e-5, atol=0)
        np.testing.assert_allclose(paired.answer_prob_shuffled, shuffled.answer_prob_after, rtol=1e-5, atol=0)
        assert list(paired.shuffled_memory) == list(shuffled.memory)
        assert list(paired.shuffled_row) == list(shuffled.memory_row)
        assert (paired.shuffled_row != paired.row).all()
        # a difference of two probabilities: its error is relative to them, not to it
        size = np.maximum(correct.answer_prob_after, shuffled.answer_prob_after).to_numpy()
        error = np.abs(paired.specific_gain - (correct.answer_prob_after - shuffled.answer_prob_after)).to_numpy()
        assert (error <= 1e-5 * size).all()


def test_the_shuffled_memory_agrees_with_the_plain_reference_per_prompt(tiny, demo):
    """The shuffled lane through the prefix cache against TransformerLens hooks on the plain
    bridge, each prompt injected with the memory text the CSV says it received."""
    dataset = _subset(demo, 6)
    evaluator = make_evaluator(tiny, dataset, max_batch_tokens=64)
    for layer in (0, tiny.n_layers - 1):
        spec = InjectionSpec(layer=layer, tweak=4.0)
        table = evaluator.evaluate(spec, _memory(), specific=True).per_prompt
        for _, row in table.iterrows():
            _, after = reference_answer_probs(
                tiny.bridge, row.obscure_sentence, row.answer, row.shuffled_memory, layer=layer, tweak=4.0, head=None
            )
            assert np.log(row.answer_prob_shuffled) == pytest.approx(np.log(after), abs=1e-5)


def test_specific_gain_in_the_summary_is_the_mean_of_the_per_prompt_differences(tiny, demo):
    evaluator = make_evaluator(tiny, demo)
    result = evaluator.evaluate(InjectionSpec(layer=1, tweak=6.0), _memory(), specific=True)
    table = result.per_prompt
    assert result.summary["specific_gain"] == pytest.approx(float(table.specific_gain.mean()), rel=1e-12)
    assert result.summary["shuffled_gain"] == pytest.approx(float(table.gain_shuffled.mean()), rel=1e-12)
    assert result.summary["specific_gain"] == pytest.approx(
        result.summary["mean_gain"] - result.summary["shuffled_gain"], rel=1e-9
    )
    plain = evaluator.evaluate(InjectionSpec(layer=1, tweak=6.0), _memory())
    assert "specific_gain" not in plain.summary and "specific_gain" not in plain.per_prompt


def test_eval_with_memory_shuffled_is_deterministic_and_names_each_prompts_memory(tmp_path, monkeypatch, capsys):
    from meminject.cli import main

    monkeypatch.chdir(tmp_path)
    tables = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        args = ["eval", "model=tiny", "memory=shuffled", "injection.layer=1", "injection.tweak=4"]
        assert main([*args, "tracking.enabled=false", f"seed={seed}", f"output_dir={tmp_path / name}"]) == 0
        tables.append(pd.read_csv(tmp_path / name / "per_prompt.csv"))
    first, again, other = tables
    pd.testing.assert_frame_equal(first, again)
    assert (first.memory_row != first.row).all()
    assert list(first.memory_row) != list(other.memory_row)  # another seed, another assignment
    # memory_row names the row whose memory was injected: its text is that row's own memory
    args = ["eval", "model=tiny", "injection.layer=1", "injection.tweak=4", "tracking.enabled=false"]
    assert main([*args, f"output_dir={tmp_path / 'correct'}"]) == 0
    own = pd.read_csv(tmp_path / "correct" / "per_prompt.csv")
    assert (own.memory_row == own.row).all()
    entity = dict(zip(own.row, own.memory))
    assert list(first.memory) == [entity[r] for r in first.memory_row]
    assert "shuffled/unembed" in capsys.readouterr().out
