"""Small statistics: a trial's summary metrics, the typical residual norm, and for honest site
selection seeded bootstrap intervals, a paired sign-flip test and Holm's correction."""

from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_mean_ci", "paired_sign_flip_p", "holm", "summarize", "typical_norm", "MASSIVE"]


def bootstrap_mean_ci(values: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample prompts with replacement ``n_boot`` times."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def paired_sign_flip_p(differences: np.ndarray, *, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value that the mean paired difference is 0 (random sign flips per prompt)."""
    differences = np.asarray(differences, dtype=float)
    if len(differences) == 0:
        return float("nan")
    observed = abs(differences.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, len(differences)))
    null = np.abs((signs * differences).mean(axis=1))
    return float((1 + np.sum(null >= observed - 1e-15)) / (n_perm + 1))


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error over all the given tests): sort
    ascending, multiply the k-th smallest by (m - k), keep them non-decreasing, cap at 1."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def summarize(before: np.ndarray, after: np.ndarray, explicit: np.ndarray, logprob_before: np.ndarray | None = None, logprob_after: np.ndarray | None = None) -> dict[str, float]:
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
