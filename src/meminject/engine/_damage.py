"""Collateral damage of an injection: how much else it changed besides the answer.

The default measure is the KL divergence between the clean and the injected next-token
distributions at the read position (the answer's first token), with the answer token taken
out and the rest renormalized:

    KL(p̃_clean ‖ p̃_injected),   p̃(t) = p(t) / (1 − p(answer))  for t ≠ answer

An injection that raises the answer by flattening everything else, or by pushing its own
memory tokens everywhere, moves the rest of the distribution: KL > 0. One that only moves
probability mass onto the answer leaves p̃ unchanged: KL = 0.

**The fused form** (:class:`CleanRest`, what a trial runs). With w = p̃_clean and
e = z_injected − z_clean the change of the logits (t ≠ answer), the KL is a cumulant of e:

    KL = log E_w[exp(e)] − E_w[e] = log1p(E_w[φ(e − c)]),   φ(x) = expm1(x) − x ≥ 0,  c = E_w[e]

(the second form because E_w[e − c] = 0; an error δ in c moves the result by only δ·KL). It
needs no log-softmax of the injected logits: one subtraction, two weighted sums and one
``expm1`` over the vocabulary, in float32, on logits the trial has anyway; w and the clean
logits are computed once, from the clean pass. A sum of non-negative terms has no
cancellation, and e = 0 gives exactly 0. :func:`rest_kl` is the plain two-log-softmax
definition in float64: the reference the fused form is tested against, and its fallback for a
row whose e overflows float32's ``expm1`` (a change of more than ~88 nats).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..config._choices import DAMAGES  # noqa: F401 - metric.damage, re-exported

__all__ = ["DAMAGES", "CleanRest", "rest_logprobs", "rest_kl"]


def rest_logprobs(logits: Float[Tensor, "n d_vocab"], answer: Int[Tensor, " n"]) -> Float[Tensor, "n d_vocab"]:
    """log p̃: the distribution without the answer token, renormalized (−inf at the answer)."""
    masked = (logits if logits.dtype == torch.float64 else logits.float()).scatter(1, answer[:, None], float("-inf"))
    return torch.log_softmax(masked, dim=-1)


def rest_kl(
    clean_logits: Float[Tensor, "n d_vocab"], logits: Float[Tensor, "n d_vocab"], answer: Int[Tensor, " n"]
) -> Float[Tensor, " n"]:
    """KL(p̃_clean ‖ p̃_injected) per prompt, by the definition: two log-softmaxes in float64."""
    clean = rest_logprobs(clean_logits.double(), answer)
    injected = rest_logprobs(logits.double(), answer)
    terms = clean.exp() * (clean - injected)
    return (
        terms.scatter(1, answer[:, None], 0.0).sum(dim=-1).clamp_min(0.0)
    )  # the answer's 0·(−inf − −inf) is NaN: it is out


class CleanRest:
    """The clean side of every trial's damage, kept from the clean pass.

    Rows are stored in the order the clean pass read its batches, so a trial's batch (the same
    length-bucketed batches, or the last-token batch that concatenates them) is one slice, not
    a gather; two scratch buffers are reused across trials (no page faults for a fresh
    vocabulary-sized temporary in every trial)."""

    def __init__(self, parts: list[tuple[Tensor, Tensor, Tensor]], n_prompts: int) -> None:
        """``parts``: (prompt indices, clean logits at the read position, first answer token) per batch."""
        index = torch.cat([rows.cpu() for rows, _, _ in parts])
        self.logits = torch.cat([logits.float() for _, logits, _ in parts])  # (n, vocab)
        self.answer = torch.cat([answer for _, _, answer in parts])
        # p̃_clean in float64, kept in float32; exp(−inf) = 0 at the answer
        self.weights = rest_logprobs(self.logits.double(), self.answer).exp().float()
        self.slot = torch.full((n_prompts,), -1, dtype=torch.long)  # prompt -> its row here
        self.slot[index] = torch.arange(len(index))
        self._scratch: dict[str, Tensor] = {}

    @property
    def nbytes(self) -> int:
        return self.logits.nbytes + self.weights.nbytes

    def _rows(self, prompts: Tensor) -> slice | Tensor:
        slots = self.slot[prompts.cpu()]
        if bool((slots < 0).any()):
            raise ValueError("damage asked for a prompt the clean pass did not read")
        first = int(slots[0])
        if bool((slots == torch.arange(first, first + len(slots))).all()):
            return slice(first, first + len(slots))
        return slots.to(self.logits.device)

    def _buffer(self, name: str, like: Tensor) -> Tensor:
        buffer = self._scratch.get(name)
        if buffer is None or buffer.shape[0] < like.shape[0] or buffer.device != like.device:
            buffer = self._scratch[name] = torch.empty_like(like, dtype=torch.float32)
        return buffer[: like.shape[0]]

    def kl(self, prompts: Int[Tensor, " m"], logits: Float[Tensor, "m d_vocab"]) -> Float[Tensor, " m"]:
        """KL(p̃_clean ‖ p̃_injected) for ``prompts`` from their injected logits, fused (float64 out)."""
        rows = self._rows(prompts)
        clean, weights, answer = self.logits[rows], self.weights[rows], self.answer[rows]
        change = torch.sub(logits.float(), clean, out=self._buffer("change", logits))
        change.scatter_(1, answer[:, None], 0.0)  # weight 0 there; keeps an infinite logit out of the sums
        scratch = self._buffer("scratch", logits)
        mean = torch.mul(weights, change, out=scratch).sum(dim=-1, keepdim=True)  # E_w[change]: a cascade sum
        change.sub_(mean)  # centred: E_w[change] = 0
        phi = torch.expm1(change, out=scratch).sub_(change).mul_(weights)  # w·φ, every term ≥ 0
        kl = torch.log1p(phi.sum(dim=-1)).double().clamp_min(0.0)
        wild = ~torch.isfinite(kl)
        if bool(wild.any()):  # float32 expm1 overflowed (a change of ~88 nats): the definition, for those rows
            kl[wild] = rest_kl(clean[wild], logits[wild], answer[wild])
        return kl
