"""The formula and the encodings, checked against their definitions."""

from __future__ import annotations

import pytest
import torch

from meminject.engine._injection import embed_memory, inject, multi_hot, position_mask, unembed_memory
from meminject.engine._memories import encode_memories
from reference import reference_memory_vector


def test_inject_adds_tweak_times_vector_only_at_masked_positions():
    torch.manual_seed(0)
    attn_out = torch.randn(2, 4, 8)
    memory = torch.randn(2, 8)
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 0]], dtype=torch.float32)
    out = inject(attn_out, memory, 3.0, mask)
    for b in range(2):
        for p in range(4):
            expected = attn_out[b, p] + 3.0 * memory[b] * mask[b, p]
            torch.testing.assert_close(out[b, p], expected)


def test_position_mask_all_and_last():
    attention_mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    last = torch.tensor([2, 3])
    assert position_mask(attention_mask, last, "all").tolist() == attention_mask.float().tolist()
    assert position_mask(attention_mask, last, "last").tolist() == [[0, 0, 1, 0], [0, 0, 0, 1]]


def test_multi_hot_counts_repeated_tokens_once():
    hot = multi_hot([3, 5, 3], 8)
    assert hot.tolist() == [0, 0, 0, 1, 0, 1, 0, 0]


def test_unembed_and_embed_match_multi_hot_products(tiny):
    ids = tiny.tokenize("George Washington Washington", bos=False)
    hot = multi_hot(ids, tiny.W_U.shape[1])
    torch.testing.assert_close(unembed_memory(ids, tiny.W_U), hot @ tiny.W_U.T)
    torch.testing.assert_close(embed_memory(ids, tiny.W_E), hot @ tiny.W_E)


def test_each_encoding_matches_the_reference_formula(tiny):
    texts = ["George Washington", "Paris", "The Eiffel Tower in Paris"]
    for encoding in ("unembed", "embed", "layer"):
        for layer in range(tiny.n_layers):
            fast = encode_memories(tiny, texts, [2, 3, 4], encoding, layer, max_batch_tokens=16)
            for row, text in enumerate(texts):
                expected = reference_memory_vector(tiny.bridge, text, encoding, layer)
                # float32 through the layers, batched (padded) against alone: summation order differs
                torch.testing.assert_close(fast[row], expected.float(), atol=2e-5, rtol=1e-4)


@pytest.mark.slow
def test_paper_weights_change_unembed_memories_raw_keeps_tied_smollm2(smol):
    from conftest import compose
    from meminject.engine._models import load_model

    # Raw SmolLM2: the unembedding is the transposed embedding (tied weights), as shipped.
    torch.testing.assert_close(smol.W_U, smol.W_E.T)
    paper = load_model(compose("model=smollm2-135m", "model.device=cpu", "model.weights=paper").model)
    # Paper weights centre the unembedding over the vocabulary (HookedTransformer's
    # center_unembed) and fold the final norm into it: each row of W_U has mean 0, raw ones do not.
    assert paper.W_U.mean(dim=-1).abs().max() < 1e-4
    assert smol.W_U.mean(dim=-1).abs().max() > 1e-3
    texts, rows = ["George Washington", " Paris"], [0, 1]
    raw_vectors = encode_memories(smol, texts, rows, "unembed", 5)
    paper_vectors = encode_memories(paper, texts, rows, "unembed", 5)
    # the same formula (sum of the tokens' W_U columns) on the processed weights
    ids = [paper.tokenize(t, bos=False) for t in texts]
    for vector, tokens in zip(paper_vectors, ids):
        torch.testing.assert_close(
            vector.float(), paper.W_U[:, sorted(set(tokens))].sum(dim=1).float(), atol=1e-4, rtol=1e-4
        )
    assert (paper_vectors - raw_vectors).norm(dim=-1).min() > 1e-2 * raw_vectors.norm(dim=-1).min()
