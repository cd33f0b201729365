"""Sweep settings: the command keys of sweep/worker/best, presets, and the stored sweep spec.

A preset (``sweeps/NAME.yaml``) reads like a small form: a description, what it optimizes
(``objective``, ``direction``), the sampler and budget, fixed config, and searched axes in
Hydra's sweeper grammar (:mod:`meminject.space`). :func:`load_sweep` applies the command
line to it; the resulting :class:`SweepSpec` is stored in the study, so every worker runs
exactly the same sweep.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import OmegaConf

from ..core._errors import ConfigError
from ..config._checks import SEED_MAX, seed as check_seed
from ..core._paths import preset_dirs
from ._keys import SWEEP_SETTINGS, as_positive_int, parse_settings

__all__ = [
    "SweepSpec",
    "load_sweep",
    "presets",
    "SAMPLERS",
    "DIRECTIONS",
]

SAMPLERS = ("grid", "tpe", "random", "nsga2", "adaptive")
DIRECTIONS = ("maximize", "minimize")
# Trial summary metrics a sweep can optimize; specific_gain (gain − gain with another prompt's memory,
# paired per prompt) turns metric.specific on: the shuffled copy runs in the same stacked forward.
OBJECTIVES = ("mean_gain", "specific_gain", "median_gain", "frac_improved", "mean_logprob_gain", "mean_damage")
SPECIFIC = "specific_gain"
_CONSTRAINT = re.compile(r"^\s*([a-z_]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


_AXIS_HEADS = ("choice", "range", "interval", "int", "tag", "float", "logrange")


@dataclass
class SweepSpec:
    """Everything that defines a sweep; stored in the study so any worker can rebuild it."""

    name: str
    sampler: str
    n_trials: int | None
    seed: int
    overrides: list[str]  # fixed config overrides (preset's, then the command line's)
    params: dict[str, str]  # searched axes: config key -> grammar expression
    study_name: str = ""
    notes: list[str] = field(default_factory=list)
    objective: str = "mean_gain"  # the trial summary metric Optuna optimizes (the first of several)
    direction: str = "maximize"
    objectives: list[str] = field(default_factory=list)  # a multi-objective study: every objective, in order
    directions: list[str] = field(default_factory=list)
    constraint: str | None = None  # "metric<=bound" or "metric>=bound": feasible trials only win
    pruner: str = "none"  # none | mean | wilcoxon (see meminject.search._pruning)
    prune_chunks: int = 8  # prompt chunks of a trial when pruning (1 when not)
    prune_p: float = 0.01
    prune_keep: int = 5  # trials are compared with the k-th best complete one
    prune_first: int = 16  # pruner=halving: prompts at the first checkpoint, 3× more at each next
    adaptive_keep: int = 5  # sampler=adaptive: the top k it refines, grows and stops on (search._adaptive)
    adaptive_rounds: int = 8  # sampler=adaptive: rounds after the coarse one, at most

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    def all_objectives(self) -> list[str]:
        return self.objectives if self.multi else [self.objective]

    def all_directions(self) -> list[str]:
        return self.directions if self.multi else [self.direction]

    def bound(self) -> tuple[str, str, float] | None:
        """The constraint as (metric, "<=" or ">=", bound), or None."""
        if not self.constraint:
            return None
        metric, op, value = _CONSTRAINT.match(self.constraint).groups()
        return metric, op, float(value)

    @property
    def chunks(self) -> int:
        """Chunks a trial's prompts are evaluated in: pruning checks after each."""
        return self.prune_chunks if self.pruner != "none" else 1

    @property
    def first_chunk(self) -> int:
        """``pruner=halving``: prompts of the first chunk, each next chunk making 3× as many
        seen (checkpoints at 16, 48, 144, ... prompts); 0: equal chunks."""
        return self.prune_first if self.pruner == "halving" else 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def redacted(self) -> "SweepSpec":
        """This spec with every URL's password hidden: what a study stores (workers and resumes
        take the secret from the environment, see :mod:`meminject.core._secrets`)."""
        from ..core._redaction import redact

        return SweepSpec(**{**asdict(self), "overrides": [redact(o) for o in self.overrides]})

    @classmethod
    def from_json(cls, text: str) -> "SweepSpec":
        return cls(**json.loads(text))


def _seed(value: Any) -> int:
    """The sweep's ``seed=``: an integer seed, or one line (``seed=`` or ``seed=abc`` was a traceback)."""
    try:
        number = int(str(value).strip())
    except ValueError as exc:
        raise ConfigError(f"seed={value!r} must be an integer seed between 0 and {SEED_MAX} (2**63 - 1)") from exc
    check_seed("seed", number)
    return number


def presets() -> dict[str, tuple[Path, str]]:
    """Preset name -> (file, one-line description); packaged first, ./sweeps adds."""
    found: dict[str, tuple[Path, str]] = {}
    for folder in preset_dirs():
        for path in sorted(folder.glob("*.yaml")):
            if path.stem not in found:
                found[path.stem] = (path, _description(path))
    return found


def _description(path: Path) -> str:
    try:
        return str(OmegaConf.load(path).get("description") or "").strip()
    except Exception:  # noqa: BLE001 - a broken user preset still lists; loading it says what is wrong
        return "(unreadable preset)"


def _is_axis(key: str, value: str) -> bool:
    if key.startswith(("injection.", "memory.")) and value.strip() == "all":
        return True
    return "(" in value and value.split("(", 1)[0].strip() in _AXIS_HEADS


def _split_config(args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Config args of a sweep command line: fixed overrides, and searched axes."""
    from ..config import check_override_syntax

    overrides, axes = [], {}
    for arg in args:
        key, value = arg.split("=", 1)
        key = key.lstrip("+")
        if _is_axis(key, value):
            axes[key] = value
        elif key == "model" and "," in value:
            axes[key] = f"choice({value})"
        else:
            check_override_syntax(arg)
            overrides.append(arg)
    return overrides, axes


_PRESET_KEYS = {
    "description",
    "objective",
    "direction",
    "directions",
    "constraint",
    "sampler",
    "n_trials",
    "seed",
    "config",
    "params",
    "study",
    "pruner",
    "prune_chunks",
    "prune_p",
    "prune_keep",
    "prune_first",
    "adaptive_keep",
    "adaptive_rounds",
}


def load_sweep(args: Sequence[str]) -> tuple[SweepSpec, dict[str, str]]:
    """Read the preset named by ``sweep=`` and apply the command line; returns (spec, settings)."""
    settings, config_args = parse_settings(args, SWEEP_SETTINGS, "sweep", rest_allowed=True)
    cli_overrides, cli_axes = _split_config(config_args)
    name = settings.get("sweep", "smoke")
    known = presets()
    if name not in known:
        raise ConfigError(
            f"unknown sweep {name!r}; choose from: {', '.join(sorted(known))} (or add ./sweeps/{name}.yaml)"
        )
    path = known[name][0]
    preset = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    unknown = set(preset) - _PRESET_KEYS
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_PRESET_KEYS))})"
        )
    if "objective" in settings:  # the command line's single objective, in its natural direction
        if settings["objective"] not in OBJECTIVES:
            raise ConfigError(f"objective={settings['objective']!r} is not one of {', '.join(OBJECTIVES)}")
        preset = {**preset, "objective": settings["objective"]}
        preset["direction"] = "minimize" if settings["objective"] == "mean_damage" else "maximize"
        preset.pop("directions", None)
    objectives, directions = _objectives(path, preset)
    objective, direction = objectives[0], directions[0]
    constraint = _constraint(settings.get("constraint", preset.get("constraint")))
    sampler = str(settings.get("sampler", preset.get("sampler", "tpe")))
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler={sampler!r} is not one of {', '.join(SAMPLERS)}")
    n_trials = settings.get("n_trials", preset.get("n_trials"))
    n_trials = None if n_trials in (None, "null", "None") else as_positive_int(n_trials, "n_trials")
    if sampler != "grid" and n_trials is None:
        raise ConfigError(f"sampler={sampler} needs a trial budget: n_trials=N")
    pruner, chunks, prune_p, keep = _pruning(settings, preset)
    if pruner != "none" and len(objectives) > 1:
        raise ConfigError(
            f"pruner={pruner}: Optuna prunes single-objective studies only; use pruner=none with objective {objectives}"
        )
    preset_overrides = [f"{k}={v}" for k, v in (preset.get("config") or {}).items()]
    seed = _seed(next((o.split("=", 1)[1] for o in cli_overrides if o.startswith("seed=")), preset.get("seed", 0)))
    params = _search_axes(name, preset, cli_axes, cli_overrides)
    given = (
        preset_overrides + cli_overrides + _specific_override(objectives, constraint, preset_overrides + cli_overrides)
    )
    spec = SweepSpec(
        name=name,
        sampler=sampler,
        n_trials=n_trials,
        seed=seed,
        # Sweeps pick sites on the train part only; `meminject best` judges them on the held-out part.
        overrides=(["data.part=train"] if not any(o.startswith("data.part=") for o in given) else [])
        + given
        + ([f"seed={seed}"] if not any(o.startswith("seed=") for o in cli_overrides) else []),
        params=params,
        study_name=str(settings.get("study", "")),
        objective=objective,
        direction=direction,
        objectives=objectives if len(objectives) > 1 else [],
        directions=directions if len(objectives) > 1 else [],
        constraint=constraint,
        pruner=pruner,
        prune_chunks=chunks,
        prune_p=prune_p,
        prune_keep=keep,
        **_adaptive_keys(settings, preset),
    )
    return spec, settings


def _adaptive_keys(settings: Mapping[str, str], preset: Mapping[str, Any]) -> dict[str, int]:
    """``pruner=halving``'s first checkpoint (a command key too) and ``sampler=adaptive``'s preset keys."""
    return {
        "prune_first": as_positive_int(settings.get("prune_first", preset.get("prune_first", 16)), "prune_first"),
        "adaptive_keep": as_positive_int(preset.get("adaptive_keep", 5), "adaptive_keep"),
        "adaptive_rounds": as_positive_int(preset.get("adaptive_rounds", 8), "adaptive_rounds"),
    }


def _search_axes(
    name: str, preset: Mapping[str, Any], cli_axes: dict[str, str], cli_overrides: list[str]
) -> dict[str, str]:
    """The preset's axes and the command line's; a key given a fixed value on the command line is not searched."""
    params = {str(k): str(v) for k, v in (preset.get("params") or {}).items()}
    params.update(cli_axes)
    for key in list(params):
        if any(o.split("=", 1)[0] == key for o in cli_overrides):  # a fixed value on the command line wins
            del params[key]
    if not params:
        raise ConfigError(
            f"sweep {name!r} searches nothing: give at least one axis, e.g. injection.layer='range(0,all)'"
        )
    return params


def _objectives(path: Path, preset: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``objective: mean_gain`` or ``objective: [mean_gain, mean_damage]``, with as many directions."""
    objectives = preset.get("objective", "mean_gain")
    directions = preset.get("direction", preset.get("directions", "maximize"))
    objectives = [str(o) for o in objectives] if isinstance(objectives, list) else [str(objectives)]
    directions = [str(d) for d in directions] if isinstance(directions, list) else [str(directions)]
    for objective in objectives:
        if objective not in OBJECTIVES:
            raise ConfigError(f"{path}: objective={objective!r} is not one of {', '.join(OBJECTIVES)}")
    for direction in directions:
        if direction not in DIRECTIONS:
            raise ConfigError(f"{path}: direction={direction!r} is not one of {', '.join(DIRECTIONS)}")
    if len(directions) != len(objectives) or len(set(objectives)) != len(objectives):
        raise ConfigError(
            f"{path}: {len(objectives)} distinct objective(s) need as many directions (got objective={objectives}, direction={directions})"
        )
    return objectives, directions


def _specific_override(objectives: list[str], constraint: str | None, given: list[str]) -> list[str]:
    """``metric.specific=true`` when the sweep optimizes or bounds the specific gain (which needs
    the shuffled copy of every trial); a command line that turns it off is refused."""
    bounded = constraint is not None and constraint.startswith(SPECIFIC)
    if SPECIFIC not in objectives and not bounded:
        return []
    if off := [o for o in given if o.replace(" ", "").lower() == "metric.specific=false"]:
        raise ConfigError(
            f"objective {SPECIFIC} needs the shuffled memory of every trial, but {off[0]} turns it off; drop that override"
        )
    return [] if any(o.split("=", 1)[0] == "metric.specific" for o in given) else ["metric.specific=true"]


def _constraint(text: Any) -> str | None:
    if text in (None, "", "null", "None"):
        return None
    match = _CONSTRAINT.match(str(text))
    if not match or match.group(1) not in OBJECTIVES:
        raise ConfigError(
            f"constraint={text!r}: use METRIC<=BOUND or METRIC>=BOUND with a metric of {', '.join(OBJECTIVES)}, e.g. constraint='mean_damage<=0.05'"
        )
    return str(text).replace(" ", "")


def _pruning(settings: Mapping[str, str], preset: Mapping[str, Any]) -> tuple[str, int, float, int]:
    """The pruner settings: the command line's, else the preset's, else off."""
    from ._pruning import PRUNERS

    pruner = str(settings.get("pruner", preset.get("pruner", "none")))
    if pruner not in PRUNERS:
        raise ConfigError(f"pruner={pruner!r} is not one of {', '.join(PRUNERS)}")
    chunks = as_positive_int(settings.get("prune_chunks", preset.get("prune_chunks", 8)), "prune_chunks")
    if pruner not in ("none", "halving") and chunks < 2:
        raise ConfigError(f"prune_chunks={chunks}: pruning needs at least 2 chunks (or pruner=none)")
    try:
        prune_p = float(settings.get("prune_p", preset.get("prune_p", 0.01)))
    except ValueError as exc:
        raise ConfigError(f"prune_p={settings.get('prune_p')!r} must be a number in (0, 1)") from exc
    if not 0 < prune_p < 1:
        raise ConfigError(f"prune_p={prune_p} must be in (0, 1), e.g. prune_p=0.01")
    keep = as_positive_int(settings.get("prune_keep", preset.get("prune_keep", 5)), "prune_keep")
    return pruner, chunks, prune_p, keep
