"""What an evaluation returns: the per-prompt table and its summary, whole or (pruned) partial."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ._damage import CleanRest
from ._runner import Batch
from ._stats import summarize

__all__ = [
    "EvalResult",
    "Monitor",
    "per_prompt_table",
    "empty_out",
    "read_answers",
    "with_shuffled",
    "chunk_values",
    "evaluation_result",
]


@dataclass
class EvalResult:
    per_prompt: pd.DataFrame
    summary: dict[str, float]
    seconds: float = 0.0
    hooks: list[str] = field(default_factory=list)
    pruned: bool = False  # stopped early by its monitor: per_prompt and summary cover the prompts seen
    n_prompts: int = 0  # prompts evaluated


# A trial's monitor: called after each chunk of prompts with their dataset rows and per-prompt values
# ({"gain": ..., "logprob_gain": ...}); returns True to stop the trial there (pruned).
Monitor = Callable[[np.ndarray, dict[str, np.ndarray]], bool]


def per_prompt_table(
    evaluator: Any, texts: list[str], out: dict[str, Any], clean: dict[str, np.ndarray]
) -> pd.DataFrame:
    """One row per prompt: the memory, P(answer) before/after/explicit, gains, ranks, top-k after."""
    after, rank_after, top, logprob_after = out["probs"], out["ranks"], out["top"], out["logprobs"]
    frame = evaluator.dataset.frame
    gain = after - clean["before"]
    decode = evaluator.model.decode
    answer_token = evaluator.answer_token.cpu()
    return pd.DataFrame(
        {
            "row": evaluator.rows,
            "obscure_sentence": frame["obscure_sentence"].tolist(),
            "answer": frame["answer"].tolist(),
            "memory": texts,
            "memory_row": out.get("memory_rows", [-1] * len(texts)),  # whose memory it is (-1: a word control's)
            "answer_token": answer_token.numpy(),
            "answer_tokens": [
                len(ids) if evaluator.answer_metric == "sequence" else 1 for ids in evaluator.answer_ids
            ],  # tokens scored
            "answer_token_str": [decode(t) for t in answer_token.tolist()],
            "answer_prob_before": clean["before"],
            "answer_prob_after": after,
            "answer_prob_explicit": clean["explicit"],
            "gain": gain,
            "answer_logprob_before": clean["logprob_before"],
            "answer_logprob_after": logprob_after,
            "logprob_gain": logprob_after - clean["logprob_before"],
            "percent_increase": np.where(
                clean["before"] > 0, gain / np.maximum(clean["before"], 1e-300) * 100.0, np.nan
            ),
            "damage": out["damage"],  # KL of the rest of the next-token distribution (meminject.damage)
            "rank_before": clean["rank_before"],
            "rank_after": rank_after,
            "top_k_after": ["|".join(decode(t) for t in ids) for ids in top],
        }
    )


def chunk_values(out: dict[str, Any], clean: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """Per-prompt values of the prompts at ``index`` (what a trial's monitor judges)."""
    values = {
        "gain": out["probs"][index] - clean["before"][index],
        "logprob_gain": out["logprobs"][index] - clean["logprob_before"][index],
    }
    if "shuffled" in out:  # gain − gain_shuffled: the before cancels
        values["specific_gain"] = out["probs"][index] - out["shuffled"]["probs"][index]
    return values


def with_shuffled(
    per_prompt: pd.DataFrame,
    summary: dict[str, float],
    out: dict[str, Any],
    clean: dict[str, np.ndarray],
    keep: np.ndarray,
) -> pd.DataFrame:
    """The shuffled copy's per-prompt columns (``metric.specific``), and its means into ``summary``
    over the prompts at ``keep``: specific_gain = gain − gain_shuffled (the before cancels)."""
    shuffled, after = out["shuffled"], out["probs"]
    summary["shuffled_gain"] = float((shuffled["probs"][keep] - clean["before"][keep]).mean())
    summary["specific_gain"] = float((after[keep] - shuffled["probs"][keep]).mean())
    return per_prompt.assign(
        shuffled_memory=shuffled["texts"],
        shuffled_row=[int(r) for r in shuffled["rows"]],
        answer_prob_shuffled=shuffled["probs"],
        gain_shuffled=shuffled["probs"] - clean["before"],
        specific_gain=after - shuffled["probs"],
    )


def empty_out(n: int, *, keep_rest: bool = False) -> dict[str, Any]:
    """Per-prompt arrays that :func:`read_answers` fills batch by batch."""
    out: dict[str, Any] = {
        "probs": np.zeros(n),
        "ranks": np.zeros(n, dtype=np.int64),
        "top": [[] for _ in range(n)],
        "logprobs": np.zeros(n),
        "damage": np.full(n, np.nan),
    }
    if keep_rest:
        out["rest"] = []  # (prompts, clean logits at the read position, first answer token) per batch
    return out


def _rank(logits: Tensor, token: Tensor) -> Tensor:
    """0 = the answer is the top token."""
    answer_logit = logits.gather(1, token[:, None])
    # an int32 count: a bool tensor summed to int64 is ~6x slower on the CPU (benchmarks/trial_throughput.py)
    return (logits > answer_logit).sum(dim=1, dtype=torch.int32)


def read_answers(
    batch: Batch, logits: Tensor, out: dict[str, Any], top_k: int, clean_rest: CleanRest | None = None
) -> None:
    """From one batch's logits at its read positions: log P(answer) per prompt (summed over
    answer tokens for the sequence metric), the first answer token's rank and top-k, and (with
    ``clean_rest``) the damage at that position; a clean pass (``out["rest"]``) keeps its logits there."""
    logp_reads = torch.log_softmax(logits, dim=-1).gather(1, batch.read_target[:, None])[:, 0].double()
    size = batch.tokens.shape[0]
    logp = torch.zeros(size, dtype=torch.float64, device=logits.device).index_add_(0, batch.read_row, logp_reads)
    # the first read of each prompt is its first answer token (reads are ordered by row, then position)
    row_np = batch.read_row.cpu().numpy()
    if len(row_np) == size and bool((row_np == np.arange(size)).all()):  # one read per row, in order: no copy
        first_logits, first_target = logits, batch.read_target
    else:
        _, first = np.unique(row_np, return_index=True)
        first = torch.as_tensor(first, device=logits.device)
        first_logits, first_target = logits[first], batch.read_target[first]
    index = batch.index.cpu().numpy()
    out["probs"][index] = logp.exp().cpu().numpy()
    out["logprobs"][index] = logp.cpu().numpy()
    out["ranks"][index] = _rank(first_logits, first_target).cpu().numpy()
    for row, ids in zip(index, first_logits.topk(top_k, dim=-1).indices.cpu().tolist()):
        out["top"][row] = ids
    if clean_rest is not None:
        out["damage"][index] = clean_rest.kl(batch.index, first_logits).cpu().numpy()
    if "rest" in out:  # a clean pass: its logits at the read position, batch by batch (see CleanRest)
        out["rest"].append((batch.index, first_logits.float(), first_target))


def evaluation_result(
    evaluator: Any,
    spec: Any,
    texts: list[str],
    out: dict[str, Any],
    clean: dict[str, np.ndarray],
    seconds: float,
    seen: np.ndarray | None = None,
) -> EvalResult:
    """An :class:`~._evaluation.Evaluator`'s result for one point: over all prompts, or (``seen``:
    a pruned point) over the prompts it saw."""
    per_prompt = per_prompt_table(evaluator, texts, out, clean)
    keep = np.arange(len(evaluator.rows)) if seen is None else seen
    after, logprob_after = out["probs"], out["logprobs"]
    summary = summarize(
        clean["before"][keep],
        after[keep],
        clean["explicit"][keep],
        clean["logprob_before"][keep],
        logprob_after[keep],
    )
    if evaluator.damage != "none":
        summary["mean_damage"] = float(out["damage"][keep].mean())
    if "shuffled" in out:  # metric.specific: the shuffled copy's columns and means
        per_prompt = with_shuffled(per_prompt, summary, out, clean, keep)
    return EvalResult(
        per_prompt=per_prompt.iloc[keep].reset_index(drop=True),
        summary=summary,
        seconds=seconds,
        hooks=[spec.hook_name],
        pruned=seen is not None,
        n_prompts=len(keep),
    )
