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

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..engine._injection import inject, position_mask
from ..engine._models import LoadedModel

__all__ = ["Projection", "project_attention_outputs", "heatmap", "head_grid", "HeadGrid"]


@dataclass
class Projection:
    """One row per (layer, head or 'all', position): top-k tokens, and the answer's rank/logit."""

    table: pd.DataFrame
    tokens: list[str]  # the prompt's tokens as text


def _vocab_view(
    activation: Tensor, W_U: Tensor, top_k: int, answer: int | None
) -> tuple[list[list[int]], list[list[float]], int | None, float | None]:
    logits = activation.float() @ W_U.float()  # (..., d_vocab)
    top = logits.topk(top_k, dim=-1)
    rank = logit = None
    if answer is not None:
        logit = float(logits[answer])
        rank = int((logits > logits[answer]).sum())
    return top.indices.tolist(), top.values.tolist(), rank, logit


def project_attention_outputs(
    model: LoadedModel,
    prompt: str,
    *,
    heads: bool = False,
    all_positions: bool = False,
    top_k: int = 5,
    answer: str | None = None,
    injection: tuple[int, float, Tensor, str] | None = None,
) -> Projection:
    """Project every layer's (and head's) attention output at the prompt into vocabulary space.

    ``injection`` = (layer, τ, vector, positions): the memory is added at that layer's
    attention output during the pass, so later layers' views show its effect.
    """
    token_ids = model.tokenize(prompt, bos=True)
    answer_id = model.tokenize(answer, bos=False)[0] if answer else None
    store = _attention_outputs(model, token_ids, heads=heads, injection=injection)
    positions = range(len(token_ids)) if all_positions else [len(token_ids) - 1]
    rows = _vocab_rows(model, store, token_ids, positions, heads=heads, top_k=top_k, answer_id=answer_id)
    return Projection(table=pd.DataFrame(rows), tokens=[model.decode(t) for t in token_ids])


def _attention_outputs(
    model: LoadedModel, token_ids: list[int], *, heads: bool, injection: tuple[int, float, Tensor, str] | None
) -> dict[str, Tensor]:
    """One pass over the prompt (with the memory injected, for ``injection``), keeping every
    layer's attention output by hook name, and with ``heads`` every layer's per-head result."""
    bridge = model.bridge
    tokens = torch.as_tensor([token_ids], device=model.device)
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
        mask = position_mask(
            torch.ones_like(tokens), torch.tensor([len(token_ids) - 1], device=model.device), positions
        )
        hooks.append(
            (f"blocks.{layer}.hook_attn_out", lambda a, hook: inject(a, vector[None].to(a.dtype), tweak, mask))
        )
    hooks += [(name, keeper(name)) for name in names]  # after the injection hook: the cache sees the injected output
    if heads:
        bridge.set_use_attn_result(True)
    try:
        with torch.no_grad():
            bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    finally:
        if heads:
            bridge.set_use_attn_result(False)
    return store


def _vocab_rows(
    model: LoadedModel,
    store: dict[str, Tensor],
    token_ids: list[int],
    positions,
    *,
    heads: bool,
    top_k: int,
    answer_id: int | None,
) -> list[dict[str, Any]]:
    """The table's rows: per layer, its whole attention output ('all') and each head (with
    ``heads``), at each of ``positions``: the top-k tokens and the answer's rank and logit."""
    W_U = model.W_U
    rows = []
    for layer in range(model.n_layers):
        units: list[tuple[Any, Tensor]] = [("all", store[f"blocks.{layer}.hook_attn_out"][0])]
        if heads:
            result = store[f"blocks.{layer}.attn.hook_result"][0]  # (pos, head, d_model)
            units += [(h, result[:, h]) for h in range(result.shape[1])]
        for unit, activation in units:
            for position in positions:
                ids, values, rank, logit = _vocab_view(activation[position], W_U, top_k, answer_id)
                rows.append(
                    {
                        "layer": layer,
                        "head": unit,
                        "position": position,
                        "token": model.decode(token_ids[position]),
                        "top_tokens": "|".join(model.decode(i) for i in ids),
                        "top_ids": " ".join(map(str, ids)),
                        "top_logits": " ".join(f"{v:.3f}" for v in values),
                        "answer_rank": rank,
                        "answer_logit": logit,
                    }
                )
    return rows


MAX_LABELLED_CELLS = 400  # up to this many cells every cell carries its numbers; beyond, the best ones


@dataclass
class HeadGrid:
    """What :func:`heatmap` draws: layers × units (heads, or the layer's whole attention output)."""

    values: pd.DataFrame  # colour: the answer's logit (or the top token's logit)
    labels: pd.DataFrame  # the text of each cell: answer rank and logit (or top token and logit)
    value_name: str
    per_head: bool


def head_grid(table: pd.DataFrame) -> HeadGrid:
    """The last position's layers × heads grid (layers × 'all' without per-head rows)."""
    last = table[table["position"] == table["position"].max()]
    per_head = last[last["head"] != "all"]  # (DataFrame.head is a method: index by name)
    data = per_head if not per_head.empty else last
    has_answer = data["answer_logit"].notna().all()
    if has_answer:
        data = data.assign(
            value=data["answer_logit"].astype(float),
            label=[f"r{int(r)}\n{v:.1f}" for r, v in zip(data["answer_rank"], data["answer_logit"])],
        )
    else:
        tops = [float(v.split()[0]) for v in data["top_logits"]]
        data = data.assign(
            value=tops, label=[f"{t.split('|')[0].strip()[:8]!s}\n{v:.1f}" for t, v in zip(data["top_tokens"], tops)]
        )
    values = data.pivot_table(index="layer", columns="head", values="value", aggfunc="first")
    labels = data.pivot(index="layer", columns="head", values="label").reindex(
        index=values.index, columns=values.columns
    )
    return HeadGrid(values, labels, "answer logit" if has_answer else "top-token logit", not per_head.empty)


def heatmap(table: pd.DataFrame, path: Path, title: str, answer: str | None = None) -> Path:
    """Layers × heads at the last position, one readable cell each: colour = the answer's
    logit (or the top token's), text = the answer's rank (r0 = top-1) and logit, or the top
    token; the prompt and answer in a wrapped title, a colour bar of normal size."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = head_grid(table)
    n_layers, n_units = grid.values.shape
    width = max(6.5, 0.75 * n_units + 2.8)
    height = max(4.5, 0.42 * n_layers + 2.2)
    fig, ax = plt.subplots(figsize=(width, height))
    values = grid.values.to_numpy(dtype=float)
    image = ax.imshow(values, aspect="auto", cmap="viridis", origin="lower", interpolation="nearest")
    cells = n_layers * n_units
    shown = np.argsort(np.nan_to_num(values, nan=-np.inf), axis=None)[::-1][
        : cells if cells <= MAX_LABELLED_CELLS else 15
    ]
    low, high = np.nanmin(values), np.nanmax(values)
    for flat in shown:
        i, j = np.unravel_index(flat, values.shape)
        bright = (values[i, j] - low) / ((high - low) or 1) > 0.6  # viridis is light at the top: dark text there
        ax.text(
            j,
            i,
            grid.labels.iat[i, j],
            ha="center",
            va="center",
            fontsize=6.5,
            linespacing=0.95,
            color="black" if bright else "white",
        )
    ax.set_xlabel("head" if grid.per_head else "attention output (all heads)")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_units), [str(c) for c in grid.values.columns])
    ax.set_yticks(range(n_layers), [str(int(v)) for v in grid.values.index], fontsize=7 if n_layers > 24 else 9)
    heading = title + (f" → answer {answer!r}" if answer else "")
    what = (
        "cell: answer rank (r0 = top-1) and logit"
        if grid.value_name == "answer logit"
        else "cell: top token and its logit"
    )
    if cells > MAX_LABELLED_CELLS:
        what += "; the 15 highest cells labelled"
    ax.set_title("\n".join(textwrap.wrap(heading, width=int(width * 11))) + f"\n({what}, last position)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03, label=grid.value_name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def side_by_side(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Before/after injection views joined per (layer, head, position)."""
    keys = ["layer", "head", "position", "token"]
    cols = ["top_tokens", "answer_rank", "answer_logit"]
    return before[keys + cols].merge(after[keys + cols], on=keys, suffixes=("_before", "_after"))


SHOWN_ROWS = 15  # inspect prints this many rows by default (--rows 0: all; the CSV holds every row)
TOKEN_WIDTH = 16  # one token as Python writes it ('\n', ' the'), cut to this many characters
TOKENS_WIDTH = 44  # the top-k tokens of a row, the same way


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _shown_token(token: Any) -> str:
    """A raw token as its repr (spaces, newlines and control characters visible), of bounded width."""
    return _fit(repr(str(token)), TOKEN_WIDTH)


def _shown_tokens(joined: Any) -> str:
    return _fit(" ".join(repr(t) for t in str(joined).split("|")), TOKENS_WIDTH)


def best_rows(table: pd.DataFrame, answer: bool, rows: int) -> pd.DataFrame:
    """The ``rows`` best rows (all for ``rows=0``): by the answer's rank (after an injection,
    when the table has both), else by the top token's logit."""
    rank = next((c for c in ("answer_rank_after", "answer_rank") if c in table.columns), None)
    if answer and rank is not None:
        ordered = table.sort_values(rank, kind="stable")
    elif "top_logits" in table.columns:
        first = table["top_logits"].astype(str).str.split(" ").str[0].astype(float)
        ordered = table.loc[first.sort_values(ascending=False, kind="stable").index]
    else:
        ordered = table
    return ordered if rows == 0 else ordered.head(rows)


def format_table(table: pd.DataFrame, answer: bool, rows: int = 0) -> str:
    """The table as printed: the ``rows`` best rows (0: all), tokens as their repr in columns of
    fixed width, so a newline, a tab or a long token cannot break the layout."""
    shown = best_rows(table, answer, rows).copy()
    columns = [
        c
        for c in (
            "layer",
            "head",
            "position",
            "token",
            "top_tokens",
            "answer_rank",
            "answer_logit",
            "top_tokens_before",
            "answer_rank_before",
            "top_tokens_after",
            "answer_rank_after",
        )
        if c in shown.columns
    ]
    if not answer:
        columns = [c for c in columns if not c.startswith("answer_")]
    if "token" in shown.columns:
        shown["token"] = shown["token"].map(_shown_token)
    for column in ("top_tokens", "top_tokens_before", "top_tokens_after"):
        if column in shown.columns:
            shown[column] = shown[column].map(_shown_tokens)
    text_columns = [c for c in columns if c == "token" or c.startswith("top_tokens")]
    formatters = {c: (lambda w: lambda v: f"{v:<{w}}")(int(shown[c].str.len().max() or 0)) for c in text_columns}
    return shown[columns].to_string(
        index=False, float_format=lambda v: f"{v:.2f}", formatters=formatters, justify="left"
    )


__all__ += ["side_by_side", "format_table", "best_rows", "SHOWN_ROWS"]
