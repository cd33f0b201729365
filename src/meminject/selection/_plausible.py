"""Values no trial can have: a stored objective or metric outside what its definition allows
(a flipped digit in a journal that still parses) is refused before ``best`` ranks it."""

from __future__ import annotations

import numpy as np
import optuna
from optuna.trial import TrialState

from ..core._errors import ConfigError
from ..search._study import stored_spec

__all__ = ["check_values"]

# What each trial metric can be, by its definition: probabilities and their differences, a
# fraction, a KL divergence. A stored value outside is a corrupt record (a flipped digit that
# still parses), never a result; the slack covers float rounding only.
_BOUNDS = {
    "mean_gain": (-1.0, 1.0, "a mean probability gain"),
    "median_gain": (-1.0, 1.0, "a median probability gain"),
    "frac_improved": (0.0, 1.0, "a fraction of prompts"),
    "mean_prob_before": (0.0, 1.0, "a probability"),
    "mean_prob_after": (0.0, 1.0, "a probability"),
    "mean_damage": (0.0, float("inf"), "a divergence"),
    "mean_logprob_gain": (-float("inf"), float("inf"), "a log-probability gain"),
}
_SLACK = 1e-6


def check_values(study: optuna.Study) -> None:
    """Refuse, in one line naming the trial, a complete trial whose stored objective or metric
    is impossible (outside :data:`_BOUNDS`, or not finite): ranking it would put it first."""
    spec = stored_spec(study)
    objectives = spec.all_objectives() if spec is not None else []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        values = {name: t.user_attrs.get(name) for name in _BOUNDS}
        values.update({name: value for name, value in zip(objectives, t.values or ())})
        for name, value in values.items():
            if not isinstance(value, (int, float)) or name not in _BOUNDS:
                continue
            low, high, what = _BOUNDS[name]
            if not (np.isfinite(value) and low - _SLACK <= value <= high + _SLACK):
                span = f"[{low:g}, {high:g}]" if np.isfinite(high) else f">= {low:g}"
                if not np.isfinite(low) and not np.isfinite(high):
                    span = "finite"
                raise ConfigError(
                    f"study {study.study_name}: trial {t.number} has {name}={value:g}, impossible for {what} "
                    f"(must be {span}): its stored record is corrupt (a changed digit?); restore the study's "
                    "storage from a backup, or rerun the sweep under a new study name"
                )
