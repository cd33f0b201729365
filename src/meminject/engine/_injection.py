"""The memory-injection formula and the memory encodings, as pure tensor functions.

A memory injection (Sakarvadia et al. 2023, arXiv 2309.05605) adds a vector that
encodes the missing hop ("George Washington") to the attention output of one layer::

    attn_out'[b, p] = attn_out[b, p] + τ · v[b] · mask[b, p]

``mask`` selects the positions (every real token, or only the last one). The paper
adds ``τ·v`` to one head's ``hook_result``; head results are summed into
``hook_attn_out``, so that is the same for every head and meminject computes it here.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["inject", "position_mask", "unembed_memory", "embed_memory", "multi_hot", "head_output_component"]


def inject(
    attn_out: Float[Tensor, "batch pos d_model"],
    memory: Float[Tensor, "batch d_model"],
    tweak: float | Float[Tensor, " batch"],
    mask: Float[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos d_model"]:
    """Return ``attn_out + τ · v`` at the masked positions (the whole method in one line)."""
    tweak = torch.as_tensor(tweak, dtype=attn_out.dtype, device=attn_out.device)
    scale = (tweak.reshape(-1, 1) * mask.to(attn_out.dtype)) if tweak.ndim else tweak * mask.to(attn_out.dtype)
    return attn_out + scale[..., None] * memory[:, None, :]


def position_mask(
    attention_mask: Int[Tensor, "batch pos"], last_index: Int[Tensor, " batch"], positions: str
) -> Float[Tensor, "batch pos"]:
    """1 where the memory is added: every real token (``all``, the paper) or the last (``last``)."""
    if positions == "all":
        return attention_mask.float()
    if positions == "last":
        mask = torch.zeros_like(attention_mask, dtype=torch.float32)
        mask[torch.arange(mask.shape[0], device=mask.device), last_index] = 1.0
        return mask
    raise ValueError(f"positions must be 'all' or 'last', not {positions!r}")


def multi_hot(token_ids: list[int], d_vocab: int, device: torch.device | str = "cpu") -> Float[Tensor, " d_vocab"]:
    """The paper's memory one-hot: 1 at every token of the memory (a repeated token counts once)."""
    hot = torch.zeros(d_vocab, device=device)
    hot[torch.as_tensor(token_ids, dtype=torch.long, device=device)] = 1.0
    return hot


def unembed_memory(token_ids: list[int], W_U: Float[Tensor, "d_model d_vocab"]) -> Float[Tensor, " d_model"]:
    """``unembed`` encoding: multi-hot(memory) · W_Uᵀ, the sum of the memory tokens' columns of W_U."""
    return W_U[:, sorted(set(token_ids))].sum(dim=-1)


def embed_memory(token_ids: list[int], W_E: Float[Tensor, "d_vocab d_model"]) -> Float[Tensor, " d_model"]:
    """``embed`` encoding: multi-hot(memory) · W_E, the sum of the memory tokens' rows of W_E."""
    return W_E[sorted(set(token_ids))].sum(dim=0)


def head_output_component(
    memory: Float[Tensor, "batch d_model"], W_O_head: Float[Tensor, "d_head d_model"]
) -> Float[Tensor, "batch d_model"]:
    """``head_subspace``: the part of v that head h can write, v · W_O[h]⁺ · W_O[h].

    Adding ``z = τ·v·W_O[h]⁺`` to head h's ``hook_z`` adds ``z·W_O[h]``, the projection of
    τ·v onto the row space of W_O[h], to the attention output; so the injection is
    computed at ``hook_attn_out`` with the projected vector. Different heads have different
    output spaces, hence different results; a v already inside that space is unchanged.
    """
    W_O_head = W_O_head.to(memory.dtype)
    return (memory @ torch.linalg.pinv(W_O_head)) @ W_O_head
