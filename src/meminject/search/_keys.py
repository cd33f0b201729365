"""The keys of the sweep, worker and best commands (with their help), and the checks every
command's ``key=value`` settings go through: one line naming the key and what to use."""

from __future__ import annotations

import difflib
import re
from typing import Any, Mapping, Sequence

from ..core._errors import ConfigError

__all__ = [
    "SWEEP_SETTINGS",
    "WORKER_SETTINGS",
    "BEST_SETTINGS",
    "parse_settings",
    "check_study_name",
    "as_positive_int",
    "as_non_negative_int",
    "as_bool",
]

# Each command's own keys (everything else on a sweep command line is config): key -> help.
SWEEP_SETTINGS = {
    "sweep": "preset name: sweeps/NAME.yaml (default smoke)",
    "n_trials": "trial budget shared by all workers (grid: at most this many points)",
    "workers": "worker processes on this machine (0: prepare the study only; default 1)",
    "study": "study name (letters, digits, . _ -; default <preset>-<model>-<data>)",
    "storage": "Optuna storage: a journal file path or an RDB URL (default $MEMINJECT_STORAGE, else ./mlruns/optuna.journal)",
    "sampler": "override the preset's sampler: grid | tpe | random | nsga2 (multi-objective) | adaptive (coarse to fine, ranges that grow)",
    "objective": "override the preset's objective: mean_gain | specific_gain (gain over another prompt's memory, 2× the injected passes) | median_gain | frac_improved | mean_logprob_gain | mean_damage (minimized)",
    "constraint": "maximize the objective subject to a metric bound, e.g. constraint='mean_damage<=0.05' (TPE, NSGA-II)",
    "heartbeat": "seconds between a running trial's heartbeats (default 30)",
    "grace": "seconds without a heartbeat before a trial counts as dead and is re-run (default 120)",
    "progress": "true | false: the progress bar",
    "pruner": "none | mean | wilcoxon | halving: stop trials clearly worse than the k-th best (prune_keep), prompt by prompt, in a paired t-test of the mean or a signed-rank test; or successive halving over prompts (the top third kept at each checkpoint) (default: the preset's)",
    "prune_chunks": "pruning: prompts are evaluated in this many seeded chunks, checked after each (default 8)",
    "prune_p": "pruning: prune when the paired one-sided p-value is below this (default 0.01; 0.05 prunes more, and sometimes good sites)",
    "prune_keep": "pruning: compare with the k-th best complete trial, so the top k always complete (default 5)",
    "prune_first": "pruner=halving: prompts at the first checkpoint; each next sees 3× as many (default 16)",
}

WORKER_SETTINGS = {
    "study": "the study to join (required)",
    "storage": "its Optuna storage (default $MEMINJECT_STORAGE, else ./mlruns/optuna.journal)",
    "worker_index": "this worker's index (default: a fresh one; seeds its sampler)",
    "progress": "true | false: the progress bar",
    "max_trials": "stop after this many trials",
}

BEST_SETTINGS = {
    "study": "the study (default: the only study in the storage)",
    "storage": "its Optuna storage (default $MEMINJECT_STORAGE, else ./mlruns/optuna.journal)",
    "top": "how many sites to show and judge on held-out prompts, and to re-rank in float32 after a bfloat16/float16 sweep (default 10)",
    "distinct": "true: only the best τ of each site | false: every point (default true)",
    "heldout": "auto | true | false: re-evaluate the top sites on held-out prompts (default auto)",
    "controls": "controls for the held-out gaps: pos, random, random_vector, pos_matched, random_matched (norm-matched; default pos,pos_matched,random_vector)",
    "bootstrap": "bootstrap resamples of the held-out intervals (default 2000)",
    "depth_figure": "auto | true | false: the held-out gain of the best τ at every layer, by relative depth, one line per model (default auto: when the study searched the layer or depth)",
}

_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def as_positive_int(value: Any, key: str) -> int:
    try:
        number = int(str(value))
    except ValueError as exc:
        raise ConfigError(f"{key}={value!r} must be a positive integer") from exc
    if number < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer")
    return number


def as_non_negative_int(value: Any, key: str) -> int:
    return 0 if str(value).strip() == "0" else as_positive_int(value, key)


def as_bool(value: Any, key: str) -> bool:
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise ConfigError(f"{key}={value!r}: use true or false")
    return text == "true"


def check_study_name(name: str) -> str:
    """A study name becomes file names under ./outputs: no separators, no '..', no surprises."""
    if not _STUDY_NAME.fullmatch(name) or ".." in name:  # fullmatch: `$` would let a final newline in
        raise ConfigError(
            f"study={name!r}: a study name is 1-100 letters, digits, '.', '_' or '-' (no '/' or '..'), e.g. study=layers-v2"
        )
    return name


def parse_settings(
    args: Sequence[str], allowed: Mapping[str, str], command: str, *, rest_allowed: bool = False
) -> tuple[dict[str, str], list[str]]:
    """Split ``key=value`` args into this command's settings and the rest (config, for sweep).

    Without ``rest_allowed`` an unknown key is refused by name, with a suggestion.
    """
    settings: dict[str, str] = {}
    rest: list[str] = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"bad argument {arg!r}: expected key=value (see meminject {command} --help)")
        key, value = arg.split("=", 1)
        if key in allowed:
            settings[key] = value
        elif rest_allowed:
            rest.append(arg)
        else:
            close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown setting {key!r} for {command}{hint}; its settings: {', '.join(allowed)}")
    if "study" in settings:
        check_study_name(settings["study"])
    return settings, rest
