"""What an evaluation returns: the per-prompt table and its summary, whole or (pruned) partial."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

__all__ = ["EvalResult", "Monitor", "per_prompt_table"]


@dataclass
class EvalResult:
    per_prompt: pd.DataFrame
    summary: dict[str, float]
    seconds: float = 0.0
    hooks: list[str] = field(default_factory=list)
    pruned: bool = False  # stopped early by its monitor: per_prompt and summary cover the prompts seen
    n_prompts: int = 0    # prompts evaluated


# A trial's monitor: called after each chunk of prompts with their dataset rows and per-prompt values
# ({"gain": ..., "logprob_gain": ...}); returns True to stop the trial there (pruned).
Monitor = Callable[[np.ndarray, dict[str, np.ndarray]], bool]


def per_prompt_table(evaluator: Any, texts: list[str], out: dict[str, Any], clean: dict[str, np.ndarray]) -> pd.DataFrame:
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
            "answer_token": answer_token.numpy(),
            "answer_tokens": [len(ids) if evaluator.answer_metric == "sequence" else 1 for ids in evaluator.answer_ids],  # tokens scored
            "answer_token_str": [decode(t) for t in answer_token.tolist()],
            "answer_prob_before": clean["before"],
            "answer_prob_after": after,
            "answer_prob_explicit": clean["explicit"],
            "gain": gain,
            "answer_logprob_before": clean["logprob_before"],
            "answer_logprob_after": logprob_after,
            "logprob_gain": logprob_after - clean["logprob_before"],
            "percent_increase": np.where(clean["before"] > 0, gain / np.maximum(clean["before"], 1e-300) * 100.0, np.nan),
            "rank_before": clean["rank_before"],
            "rank_after": rank_after,
            "top_k_after": ["|".join(decode(t) for t in ids) for ids in top],
        }
    )
