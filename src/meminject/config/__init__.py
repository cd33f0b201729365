"""The config layer: compose ``conf/`` with the command line, once, into a typed :class:`RunConfig`.

:func:`load_run_config` is what commands call; :func:`build_run_config` is the only reader of a
Hydra ``DictConfig`` below the command line. Everything downstream takes the frozen, hashable
dataclasses of :mod:`._schema`; :class:`TrialPoint` says what a trial computes.

Example::

    from meminject.config import load_run_config
    run = load_run_config(["model=tiny", "injection.layer=1"])
    print(run.injection.layer, run.point.hook_name)   # 1 blocks.1.hook_attn_out
"""

from ._build import build_run_config, coerce, load_run_config, needs_compose, with_values
from ._choices import CHOICES, relevant_keys
from ._compose import (
    GROUPS,
    check_choices,
    check_override_syntax,
    choices,
    compose_config,
    config_options,
    flat_config,
    to_yaml,
)
from ._point import (
    RESULT_FREE_SECTIONS,
    TrialPoint,
    attn_out_hook,
    hook_name,
    layer_at_depth,
    memory_key,
    relative_depth,
    site_pos,
)
from ._schema import (
    DataConfig,
    InjectionConfig,
    MemoryConfig,
    MetricConfig,
    ModelConfig,
    PerfConfig,
    RunConfig,
    TinyConfig,
    TrackingConfig,
    trial_key,
)

__all__ = [
    "RunConfig",
    "ModelConfig",
    "TinyConfig",
    "DataConfig",
    "MemoryConfig",
    "InjectionConfig",
    "MetricConfig",
    "PerfConfig",
    "TrackingConfig",
    "TrialPoint",
    "load_run_config",
    "build_run_config",
    "with_values",
    "needs_compose",
    "check_override_syntax",
    "coerce",
    "compose_config",
    "config_options",
    "flat_config",
    "to_yaml",
    "check_choices",
    "choices",
    "CHOICES",
    "GROUPS",
    "relevant_keys",
    "hook_name",
    "attn_out_hook",
    "layer_at_depth",
    "relative_depth",
    "memory_key",
    "site_pos",
    "trial_key",
    "RESULT_FREE_SECTIONS",
]
