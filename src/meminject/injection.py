"""The memory-injection formula and the memory encodings, as pure tensor functions.

A memory injection (Sakarvadia et al. 2023, arXiv 2309.05605) adds a vector that
encodes the missing hop ("George Washington") to the attention output of one layer::

    attn_out'[b, p] = attn_out[b, p] + τ · v[b] · mask[b, p]

``mask`` selects the positions (every real token, or only the last one). The paper
adds ``τ·v`` to one head's ``hook_result``; head results are summed into
``hook_attn_out``, so that is the same for every head and meminject computes it here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from .runner import Batch
    from .spec import InjectionSpec

__all__ = ["inject", "position_mask", "stacked_hooks", "unembed_memory", "embed_memory", "multi_hot", "head_output_component"]


def inject(
    attn_out: Float[Tensor, "batch pos d_model"],
    memory: Float[Tensor, "batch d_model"],
    tweak: float | Float[Tensor, "batch"],
    mask: Float[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos d_model"]:
    """Return ``attn_out + τ · v`` at the masked positions (the whole method in one line)."""
    tweak = torch.as_tensor(tweak, dtype=attn_out.dtype, device=attn_out.device)
    scale = (tweak.reshape(-1, 1) * mask.to(attn_out.dtype)) if tweak.ndim else tweak * mask.to(attn_out.dtype)
    return attn_out + scale[..., None] * memory[:, None, :]


def position_mask(
    attention_mask: Int[Tensor, "batch pos"], last_index: Int[Tensor, "batch"], positions: str
) -> Float[Tensor, "batch pos"]:
    """1 where the memory is added: every real token (``all``, the paper) or the last (``last``)."""
    if positions == "all":
        return attention_mask.float()
    if positions == "last":
        mask = torch.zeros_like(attention_mask, dtype=torch.float32)
        mask[torch.arange(mask.shape[0], device=mask.device), last_index] = 1.0
        return mask
    raise ValueError(f"positions must be 'all' or 'last', not {positions!r}")


def multi_hot(token_ids: list[int], d_vocab: int, device: torch.device | str = "cpu") -> Float[Tensor, "d_vocab"]:
    """The paper's memory one-hot: 1 at every token of the memory (a repeated token counts once)."""
    hot = torch.zeros(d_vocab, device=device)
    hot[torch.as_tensor(token_ids, dtype=torch.long, device=device)] = 1.0
    return hot


def unembed_memory(token_ids: list[int], W_U: Float[Tensor, "d_model d_vocab"]) -> Float[Tensor, "d_model"]:
    """``unembed`` encoding: multi-hot(memory) · W_Uᵀ, the sum of the memory tokens' columns of W_U."""
    return W_U[:, sorted(set(token_ids))].sum(dim=-1)


def embed_memory(token_ids: list[int], W_E: Float[Tensor, "d_vocab d_model"]) -> Float[Tensor, "d_model"]:
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


def stacked_hooks(specs: Sequence[InjectionSpec], vectors: Sequence[Float[Tensor, "n d_model"]], batch: Batch, device: torch.device,
                  last_token_only: bool = False) -> list[tuple[str, Callable]]:
    """One hook for ``len(specs)`` same-layer trials stacked along the batch axis.

    ``vectors[k]`` holds trial k's memory per prompt (rows indexed by ``batch.index``);
    ``last_token_only``: the pass carries only each prompt's last token (sequence length 1).
    """
    spec = specs[0]
    index = batch.index.to(device)
    memory = torch.cat([v[index] for v in vectors])  # (copies * batch, d_model)
    tweak = torch.cat([torch.full((len(index),), float(s.tweak), device=device) for s in specs])
    if last_token_only:
        mask = torch.ones(len(specs) * len(index), 1, device=device)
    else:
        mask = torch.cat([position_mask(batch.attention_mask, batch.prompt_last, s.positions) for s in specs])
    if spec.site == "head" and spec.literal_hook:
        def add_to_head(result: Tensor, hook) -> Tensor:  # noqa: ARG001 # (batch, pos, head, d_model)
            result = result.clone()
            result[:, :, spec.head, :] = inject(result[:, :, spec.head, :], memory.to(result.dtype), tweak, mask)
            return result
        return [(spec.hook_name, add_to_head)]

    def add_to_layer(attn_out: Tensor, hook) -> Tensor:  # noqa: ARG001 # (batch, pos, d_model)
        return inject(attn_out, memory.to(attn_out.dtype), tweak, mask)
    return [(spec.hook_name, add_to_layer)]
