"""Statistics of honest site selection: seeded bootstrap intervals, a paired sign-flip test and
Holm's correction (held-out verdicts, :mod:`._heldout`)."""

from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_mean_ci", "paired_sign_flip_p", "holm"]


def bootstrap_mean_ci(
    values: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
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
