"""Collateral damage of an injection: how much else it changed besides the answer.

The default measure is the KL divergence between the clean and the injected next-token
distributions at the read position (the answer's first token), with the answer token taken
out and the rest renormalized:

    KL(p̃_clean ‖ p̃_injected),   p̃(t) = p(t) / (1 − p(answer))  for t ≠ answer

An injection that raises the answer by flattening everything else, or by pushing its own
memory tokens everywhere, moves the rest of the distribution: KL > 0. One that only moves
probability mass onto the answer leaves p̃ unchanged: KL = 0. It costs one more log-softmax
over the vocabulary per prompt on logits the trial computes anyway; the clean side is kept
from the clean pass (its logits at the read position: prompts × vocabulary floats).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..config._choices import DAMAGES  # noqa: F401 - metric.damage, re-exported

__all__ = ["DAMAGES", "rest_logprobs", "rest_kl"]


def rest_logprobs(logits: Float[Tensor, "n d_vocab"], answer: Int[Tensor, " n"]) -> Float[Tensor, "n d_vocab"]:
    """log p̃: the distribution without the answer token, renormalized (−inf at the answer)."""
    masked = (logits if logits.dtype == torch.float64 else logits.float()).scatter(1, answer[:, None], float("-inf"))
    return torch.log_softmax(masked, dim=-1)


def rest_kl(
    clean_logits: Float[Tensor, "n d_vocab"], logits: Float[Tensor, "n d_vocab"], answer: Int[Tensor, " n"]
) -> Float[Tensor, " n"]:
    """KL(p̃_clean ‖ p̃_injected) per prompt, from the clean and the injected logits.

    Both sides in float64 from float32 logits: in float32 the sum of ~50,000 near-cancelling
    terms leaves ~1e-7 of noise, so a zero-strength injection would not read as zero damage."""
    clean = rest_logprobs(clean_logits.double(), answer)
    injected = rest_logprobs(logits.double(), answer)
    terms = clean.exp() * (clean - injected)
    return (
        terms.scatter(1, answer[:, None], 0.0).sum(dim=-1).clamp_min(0.0)
    )  # the answer's 0·(−inf − −inf) is NaN: it is out
