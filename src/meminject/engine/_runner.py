"""Batched forward passes: length-bucketed padding, attention masks, last-position reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..config._choices import PADDING_SIDES
from ._models import LoadedModel

__all__ = ["Batch", "make_batches", "last_position_logits", "read_logits", "capture_last_position"]


Hook = tuple[str, Callable]


@dataclass
class Batch:
    """Prompts padded to one length. ``index`` maps batch rows back to dataset rows."""

    index: Int[Tensor, " batch"]
    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    last_index: Int[Tensor, " batch"]  # position of each prompt's last real token
    # Where logits are read, flat over (row, position): one read per prompt at its last token
    # for the first-token metric; one per answer token for the teacher-forced sequence metric.
    read_row: Optional[Int[Tensor, " reads"]] = None
    read_pos: Optional[Int[Tensor, " reads"]] = None
    read_target: Optional[Int[Tensor, " reads"]] = None
    prompt_last: Optional[Int[Tensor, " batch"]] = None  # last prompt token (positions=last injects there)

    def __post_init__(self) -> None:
        if self.read_row is None:
            self.read_row = torch.arange(self.tokens.shape[0], device=self.tokens.device)
        if self.read_pos is None:
            self.read_pos = self.last_index
        if self.prompt_last is None:
            self.prompt_last = self.last_index

    @property
    def padded_fraction(self) -> float:
        return 1.0 - float(self.attention_mask.float().mean())


def make_batches(
    token_lists: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device: torch.device,
    max_batch_tokens: int = 4096,
    padding_side: str = "right",
    sort_by_length: bool = True,
    max_padding: float = 1.0,
    reads: Sequence[Sequence[tuple[int, int]]] | None = None,
    prompt_lengths: Sequence[int] | None = None,
    floor_tokens: int = 0,
) -> list[Batch]:
    """Group prompts into padded batches of at most ``max_batch_tokens`` (padded) tokens.

    Sorting by length first (bucketing) keeps padding small: prompts of similar length
    share a batch, and a batch is closed early when padding would exceed ``max_padding``
    of its tokens (padded tokens are computed and thrown away). With ``floor_tokens`` the
    length-sorted prompts are cut where a cost model says (:func:`_cheapest_groups`) instead:
    for a few prompts on a CPU, fewer forwards beat less padding.

    ``reads[i]`` lists (position in sequence i, target token) pairs whose logits are read;
    by default each sequence's last token. ``prompt_lengths[i]`` marks where the prompt ends
    (the rest of the sequence is the teacher-forced answer).
    """
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    order = (
        sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
        if sort_by_length
        else list(range(len(token_lists)))
    )
    if floor_tokens > 0 and sort_by_length:
        groups = _cheapest_groups(order, [len(token_lists[i]) for i in order], max_batch_tokens, floor_tokens)
    else:
        groups = _greedy_groups(token_lists, order, max_batch_tokens, max_padding)
    return [_padded_batch(token_lists, group, pad_id, device, padding_side, reads, prompt_lengths) for group in groups]


def _greedy_groups(
    token_lists: Sequence[Sequence[int]], order: list[int], max_batch_tokens: int, max_padding: float
) -> list[list[int]]:
    """Groups of consecutive prompts (in ``order``), each closed when one more prompt would
    exceed ``max_batch_tokens`` padded tokens or a ``max_padding`` fraction of padding."""
    groups = []
    current: list[int] = []
    for i in order:
        width = max([len(token_lists[j]) for j in current] + [len(token_lists[i])])
        padded = width * (len(current) + 1)
        real = sum(len(token_lists[j]) for j in current) + len(token_lists[i])
        if current and (padded > max_batch_tokens or 1.0 - real / padded > max_padding):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def _padded_batch(
    token_lists: Sequence[Sequence[int]],
    group: list[int],
    pad_id: int,
    device: torch.device,
    padding_side: str,
    reads: Sequence[Sequence[tuple[int, int]]] | None,
    prompt_lengths: Sequence[int] | None,
) -> Batch:
    """One group's prompts padded to its widest, with its read positions and prompt ends."""
    width = max(len(token_lists[i]) for i in group)
    tokens = torch.full((len(group), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(group), width), dtype=torch.long)
    last = torch.zeros(len(group), dtype=torch.long)
    for row, i in enumerate(group):
        ids = torch.as_tensor(list(token_lists[i]), dtype=torch.long)
        start = 0 if padding_side == "right" else width - len(ids)
        tokens[row, start : start + len(ids)] = ids
        mask[row, start : start + len(ids)] = 1
        last[row] = start + len(ids) - 1
    read_row, read_pos, read_target, prompt_last = None, None, None, None
    if reads is not None:
        flat = [
            (row, (0 if padding_side == "right" else width - len(token_lists[i])) + pos, target)
            for row, i in enumerate(group)
            for pos, target in reads[i]
        ]
        read_row = torch.as_tensor([r for r, _, _ in flat], dtype=torch.long, device=device)
        read_pos = torch.as_tensor([p for _, p, _ in flat], dtype=torch.long, device=device)
        read_target = torch.as_tensor([t for _, _, t in flat], dtype=torch.long, device=device)
    if prompt_lengths is not None:
        prompt_last = torch.as_tensor(
            [(0 if padding_side == "right" else width - len(token_lists[i])) + prompt_lengths[i] - 1 for i in group],
            dtype=torch.long,
            device=device,
        )
    return Batch(
        index=torch.as_tensor(group, dtype=torch.long),
        tokens=tokens.to(device),
        attention_mask=mask.to(device),
        last_index=last.to(device),
        read_row=read_row,
        read_pos=read_pos,
        read_target=read_target,
        prompt_last=prompt_last,
    )


def _cheapest_groups(order: list[int], lengths: list[int], max_batch_tokens: int, floor_tokens: int) -> list[list[int]]:
    """Contiguous groups of the length-sorted prompts with the least total cost, where a forward
    of ``n`` prompts padded to width ``w`` costs ``floor_tokens / 4 + max(n * w, floor_tokens)``
    (in tokens): on a CPU a forward of fewer tokens than ~``floor_tokens`` takes about as long as
    one of that many (matmul efficiency), and each forward has a fixed cost of its own (per-layer
    Python). Dynamic programming over the cut points: O(prompts × prompts per forward)."""
    fixed_tokens = floor_tokens / 4
    n = len(lengths)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest cost of the first j prompts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[j - 1]  # sorted: the group's last prompt is its widest
        for i in range(j - 1, -1, -1):
            padded = width * (j - i)
            if padded > max_batch_tokens and i < j - 1:
                break
            cost = best[i] + fixed_tokens + max(padded, floor_tokens)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def _forward(model: LoadedModel, batch: Batch, fwd_hooks: list[Hook], **kwargs) -> Tensor:
    bridge = model.bridge
    with torch.no_grad():
        if fwd_hooks:
            return bridge.run_with_hooks(
                batch.tokens, attention_mask=batch.attention_mask, fwd_hooks=fwd_hooks, **kwargs
            )
        return bridge(batch.tokens, attention_mask=batch.attention_mask, **kwargs)


def last_position_logits(
    model: LoadedModel, batch: Batch, fwd_hooks: list[Hook] | None = None
) -> Float[Tensor, "batch d_vocab"]:
    """Logits at each prompt's last real token, with the given hooks active.

    Only the positions that are some prompt's last token are unembedded (Hugging Face's
    ``logits_to_keep``): full-vocabulary logits for every position would cost more than
    the rest of a small model's forward.
    """
    rows = torch.arange(batch.tokens.shape[0], device=batch.tokens.device)
    return _logits_at(model, batch, fwd_hooks, rows, batch.last_index)


def read_logits(
    model: LoadedModel, batch: Batch, fwd_hooks: list[Hook] | None = None
) -> Float[Tensor, "reads d_vocab"]:
    """Logits at the batch's read positions (``read_row``, ``read_pos``), hooks active.

    Only positions that are read are unembedded (``logits_to_keep``).
    """
    return _logits_at(model, batch, fwd_hooks, batch.read_row, batch.read_pos)


def _logits_at(
    model: LoadedModel, batch: Batch, fwd_hooks: list[Hook] | None, rows: Tensor, positions: Tensor
) -> Tensor:
    """Logits at (rows, positions), unembedding only the positions read (``logits_to_keep``)."""
    keep = torch.unique(positions)  # sorted
    try:
        logits = _forward(model, batch, fwd_hooks or [], logits_to_keep=keep)
        column = torch.searchsorted(keep, positions)
    except TypeError:  # an architecture without logits_to_keep: unembed everything
        logits = _forward(model, batch, fwd_hooks or [])
        column = positions
    return logits[rows.to(logits.device), column].float()


def capture_last_position(
    model: LoadedModel, batch: Batch, hook_name: str, stop_at_layer: int | None = None
) -> Float[Tensor, "batch d_model"]:
    """The activation at ``hook_name`` at each prompt's last real token (clean run)."""
    store: dict[str, Tensor] = {}

    def keep(activation: Tensor, hook) -> Tensor:  # noqa: ARG001 - TransformerLens hook signature
        store["act"] = activation.detach()
        return activation

    _forward(model, batch, [(hook_name, keep)], stop_at_layer=stop_at_layer)
    rows = torch.arange(batch.tokens.shape[0], device=store["act"].device)
    return store["act"][rows, batch.last_index].float()
