"""``meminject inspect``: the paper notebook's head latent-space projector.

For one prompt, the attention output of every layer (``blocks.L.hook_attn_out``) and, with
``heads``, of every head (``blocks.L.attn.hook_result``) is projected into vocabulary space
through the unembedding (``activation · W_U``, no final norm: the notebook's projection),
and the top-k tokens are read at the last position, or at every position
(``all_positions``: the notebook's ``intermediate_tokens`` mode; the last position alone
is its ``aggregate_heads`` view). With an answer, its first token's rank and logit are
added per layer/head; with an injection, the same view is computed with the memory
injected, before and after side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from .injection import inject, position_mask
from .models import LoadedModel

__all__ = ["Projection", "project_attention_outputs", "heatmap"]


@dataclass
class Projection:
    """One row per (layer, head or 'all', position): top-k tokens, and the answer's rank/logit."""

    table: pd.DataFrame
    tokens: list[str]  # the prompt's tokens as text


def _vocab_view(activation: Tensor, W_U: Tensor, top_k: int, answer: int | None) -> tuple[list[list[int]], list[list[float]], int | None, float | None]:
    logits = activation.float() @ W_U.float()  # (..., d_vocab)
    top = logits.topk(top_k, dim=-1)
    rank = logit = None
    if answer is not None:
        logit = float(logits[answer])
        rank = int((logits > logits[answer]).sum())
    return top.indices.tolist(), top.values.tolist(), rank, logit


def project_attention_outputs(
    model: LoadedModel, prompt: str, *, heads: bool = False, all_positions: bool = False, top_k: int = 5,
    answer: str | None = None, injection: tuple[int, float, Tensor, str] | None = None,
) -> Projection:
    """Project every layer's (and head's) attention output at the prompt into vocabulary space.

    ``injection`` = (layer, τ, vector, positions): the memory is added at that layer's
    attention output during the pass, so later layers' views show its effect.
    """
    bridge = model.bridge
    token_ids = model.tokenize(prompt, bos=True)
    tokens = torch.as_tensor([token_ids], device=model.device)
    answer_id = model.tokenize(answer, bos=False)[0] if answer else None
    names = [f"blocks.{layer}.hook_attn_out" for layer in range(model.n_layers)]
    if heads:
        names += [f"blocks.{layer}.attn.hook_result" for layer in range(model.n_layers)]
    store: dict[str, Tensor] = {}

    def keeper(name: str):
        def keep(activation: Tensor, hook) -> Tensor:  # noqa: ARG001 - hook.name may be an alias
            store[name] = activation.detach()
            return activation
        return keep

    hooks = []
    if injection is not None:
        layer, tweak, vector, positions = injection
        mask = position_mask(torch.ones_like(tokens), torch.tensor([len(token_ids) - 1], device=model.device), positions)
        hooks.append((f"blocks.{layer}.hook_attn_out", lambda a, hook: inject(a, vector[None].to(a.dtype), tweak, mask)))
    hooks += [(name, keeper(name)) for name in names]  # after the injection hook: the cache sees the injected output
    if heads:
        bridge.set_use_attn_result(True)
    try:
        with torch.no_grad():
            bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    finally:
        if heads:
            bridge.set_use_attn_result(False)
    W_U = model.W_U
    positions = range(len(token_ids)) if all_positions else [len(token_ids) - 1]
    rows = []
    for layer in range(model.n_layers):
        units: list[tuple[Any, Tensor]] = [("all", store[f"blocks.{layer}.hook_attn_out"][0])]
        if heads:
            result = store[f"blocks.{layer}.attn.hook_result"][0]  # (pos, head, d_model)
            units += [(h, result[:, h]) for h in range(result.shape[1])]
        for unit, activation in units:
            for position in positions:
                ids, values, rank, logit = _vocab_view(activation[position], W_U, top_k, answer_id)
                rows.append({
                    "layer": layer, "head": unit, "position": position, "token": model.decode(token_ids[position]),
                    "top_tokens": "|".join(model.decode(i) for i in ids), "top_ids": " ".join(map(str, ids)),
                    "top_logits": " ".join(f"{v:.3f}" for v in values), "answer_rank": rank, "answer_logit": logit,
                })
    return Projection(table=pd.DataFrame(rows), tokens=[model.decode(t) for t in token_ids])


def heatmap(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Layers × heads at the last position; colour = the answer's logit (or the top logit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = table[table["position"] == table["position"].max()]
    per_head = last[last["head"] != "all"]  # (DataFrame.head is a method: index by name)
    data = per_head if not per_head.empty else last
    value = "answer_logit" if data["answer_logit"].notna().all() else None
    if value is None:
        data = data.assign(top_logit=[float(v.split()[0]) for v in data["top_logits"]])
        value = "top_logit"
    grid = data.pivot_table(index="layer", columns="head", values=value, aggfunc="first")
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * grid.shape[1], 1.0 + 0.25 * grid.shape[0]))
    image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap="viridis", origin="lower")
    ax.set_xlabel("head" if not per_head.empty else "attention output")
    ax.set_ylabel("layer")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=value.replace("_", " "))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def side_by_side(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Before/after injection views joined per (layer, head, position)."""
    keys = ["layer", "head", "position", "token"]
    cols = ["top_tokens", "answer_rank", "answer_logit"]
    return before[keys + cols].merge(after[keys + cols], on=keys, suffixes=("_before", "_after"))


def format_table(table: pd.DataFrame, answer: bool) -> str:
    shown = table.copy()
    columns = [c for c in ("layer", "head", "position", "token", "top_tokens", "answer_rank", "answer_logit",
                           "top_tokens_before", "answer_rank_before", "top_tokens_after", "answer_rank_after") if c in shown.columns]
    if not answer:
        columns = [c for c in columns if not c.startswith("answer_")]
    return shown[columns].to_string(index=False, float_format=lambda v: f"{v:.2f}")


__all__ += ["side_by_side", "format_table"]
