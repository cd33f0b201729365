"""A trial's summary metrics and the typical residual norm (the held-out statistics are
:mod:`meminject.selection._stats`'s)."""

from __future__ import annotations

import numpy as np

__all__ = ["summarize", "typical_norm", "MASSIVE"]


def summarize(
    before: np.ndarray,
    after: np.ndarray,
    explicit: np.ndarray,
    logprob_before: np.ndarray | None = None,
    logprob_after: np.ndarray | None = None,
) -> dict[str, float]:
    gain = after - before
    with np.errstate(divide="ignore", invalid="ignore"):
        percent = np.where(before > 0, gain / before * 100.0, np.nan)
    return {
        "mean_gain": float(gain.mean()),
        "median_gain": float(np.median(gain)),
        "mean_percent_increase": float(np.nanmean(percent)) if np.isfinite(percent).any() else float("nan"),
        "frac_improved": float((gain > 0).mean()),
        "mean_prob_before": float(before.mean()),
        "mean_prob_after": float(after.mean()),
        "mean_prob_explicit": float(explicit.mean()),
        "n_prompts": float(len(gain)),
        **({"mean_logprob_gain": float((logprob_after - logprob_before).mean())} if logprob_before is not None else {}),
    }


MASSIVE = 10.0  # a token norm above this many times the median is a massive activation, left out


def typical_norm(norms: np.ndarray) -> float:
    """A robust typical residual norm: the median after dropping massive-activation outliers
    (norms above ``MASSIVE`` × the median), so neither BOS-like tokens nor prompt length move it."""
    norms = np.asarray(norms, dtype=np.float64)
    if norms.size == 0:
        return float("nan")
    kept = norms[norms <= MASSIVE * np.median(norms)]
    return float(np.median(kept))
