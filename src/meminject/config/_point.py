"""A trial point: the injection and the memory of one trial (their dataclasses, ``conf/injection``
and ``conf/memory``), and what derives from them.

One definition each of: the point that is actually computed (:meth:`TrialPoint.canonical`),
its identity (:attr:`TrialPoint.key`, the evaluator's cache key and, with the rest of the run's
result-bearing config, :func:`meminject.config.trial_key`) and the hook it touches (:func:`hook_name`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..core._errors import ConfigError
from ._checks import FLOAT16_MAX, at_least, choice, finite, seed
from ._choices import (
    ENCODINGS,
    HOOKS,
    MEMORY_TYPES,
    POS_CHOICES,
    POSITIONS,
    SCALES,
    SITES,
    WORD_CONTROLS,
    WORD_SOURCES,
    relevant_keys,
)


__all__ = [
    "MemoryConfig",
    "InjectionConfig",
    "TrialPoint",
    "memory_key",
    "site_pos",
    "hook_name",
    "attn_out_hook",
    "layer_at_depth",
    "relative_depth",
    "RESULT_FREE_SECTIONS",
]

# Config sections that never change a trial's numbers (where results go, how fast they come).
RESULT_FREE_SECTIONS = ("tracking.", "perf.", "output_dir")


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
        choice("memory.type", self.type, MEMORY_TYPES)
        choice("memory.encoding", self.encoding, ENCODINGS)
        choice("memory.pos", self.pos, POS_CHOICES)
        choice("memory.words", self.words, WORD_SOURCES)
        at_least("memory.word_index", self.word_index, 0)
        at_least("memory.n_words", self.n_words, 1)
        at_least("memory.top_words", self.top_words, 1)
        at_least("memory.lexicon_top", self.lexicon_top, 1)
        at_least("memory.draw", self.draw, 0)
        seed("memory.seed", self.seed)


@dataclass(frozen=True)
class InjectionConfig:
    """``conf/injection``: where the memory goes and how strongly (bounds against the model's
    shape are checked by :meth:`meminject.engine.InjectionSpec.validate`, which knows it)."""

    layer: int
    depth: float | None  # relative depth in [0, 1]: sets the layer per model (layer_at_depth), layer is then ignored
    hook: str
    head: int | None
    tweak: float
    site: str
    scale: str
    positions: str
    literal_hook: bool

    def __post_init__(self) -> None:
        choice("injection.site", self.site, SITES)
        choice("injection.hook", self.hook, HOOKS)
        if self.hook != "attn_out" and self.site != "layer":
            raise ConfigError(
                f"injection.site={self.site} is a part of the attention output: it needs injection.hook=attn_out (not {self.hook})"
            )
        choice("injection.scale", self.scale, SCALES)
        choice("injection.positions", self.positions, POSITIONS)
        finite("injection.tweak", self.tweak)
        at_least("injection.tweak", self.tweak, 0)
        if self.tweak > FLOAT16_MAX:
            raise ConfigError(
                f"injection.tweak={self.tweak:g} is beyond any useful strength (float16 ends at 65,504); use a τ of at most {FLOAT16_MAX:g}"
            )
        at_least("injection.layer", self.layer, 0, " (layers count from 0)")
        if self.depth is not None:
            finite("injection.depth", self.depth)
            if not 0.0 <= self.depth <= 1.0:
                raise ConfigError(
                    f"injection.depth={self.depth:g} must lie in [0, 1] (0 = the first layer, 1 = the last); or set injection.layer"
                )
        at_least("injection.head", self.head, 0, " (heads count from 0)")

    def resolved(self, n_layers: int) -> "InjectionConfig":
        """This injection in a model of ``n_layers`` layers: with a depth, its layer set from it."""
        if self.depth is None:
            return self
        return dataclasses.replace(self, layer=layer_at_depth(self.depth, n_layers))


def layer_at_depth(depth: float, n_layers: int) -> int:
    """The layer at relative depth ``depth`` of an ``n_layers`` model: 0 is the first layer, 1 the
    last, rounded to the nearest (halves away from zero, so the map is the same on every platform)."""
    return min(n_layers - 1, int(math.floor(depth * (n_layers - 1) + 0.5)))


def relative_depth(layer: int, n_layers: int) -> float:
    """Where ``layer`` sits in an ``n_layers`` model, in [0, 1] (the inverse of :func:`layer_at_depth`)."""
    return layer / (n_layers - 1) if n_layers > 1 else 0.0


def attn_out_hook(layer: int) -> str:
    """The hook where a layer's attention block writes into the residual stream."""
    return f"blocks.{layer}.hook_attn_out"


# injection.hook -> the TransformerLens hook of block L. Each names what reaches the residual
# stream: on Gemma the bridge's hook_attn_out and hook_mlp_out are the outputs of its post-attention
# and post-feedforward norms (blocks.L.ln1_post.hook_out, ln2_post.hook_out), as the sandwich norm
# comes before the residual add (tests/unit/engine/test_gemma.py checks this against plain transformers).
_HOOKS = {"attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "resid_pre": "hook_resid_pre"}


def hook_name(injection: InjectionConfig) -> str:
    """The TransformerLens hook an injection touches (its site, by name)."""
    if injection.site == "head" and injection.literal_hook:
        return f"blocks.{injection.layer}.attn.hook_result"
    return f"blocks.{injection.layer}.{_HOOKS[injection.hook]}"


def site_pos(memory: MemoryConfig) -> str | None:
    """The part of speech that names a pos control's site (None for other memory types)."""
    return memory.pos if WORD_CONTROLS.get(memory.type) == "pos" else None


def memory_key(memory: MemoryConfig) -> tuple[tuple[str, Any], ...]:
    """The memory keys that can change this memory type's vectors, with their values: equal
    for memories that encode the same vectors (the correct memory has no part of speech)."""
    return tuple((k, getattr(memory, k)) for k in relevant_keys(memory.type))


@dataclass(frozen=True)
class TrialPoint:
    """Where, how strongly, and which memory encoded how: one point of the search space."""

    injection: InjectionConfig
    memory: MemoryConfig

    def canonical(self) -> "TrialPoint":
        """The equivalent point that is actually computed.

        Adding τ·v to one head's result equals adding it to the summed attention output,
        whatever the head: every ``site=head`` point is its layer point, so a head axis costs
        nothing. A memory key the memory type ignores (the correct memory's part of speech) is
        left out of the identity (see :attr:`key`).
        """
        inj = self.injection
        if inj.site == "head" and not inj.literal_hook:
            inj = dataclasses.replace(inj, site="layer", head=None)
        return TrialPoint(inj, self.memory)

    @property
    def memory_key(self) -> tuple[tuple[str, Any], ...]:
        return memory_key(self.memory)

    @property
    def key(self) -> tuple:
        """What this point computes (equal for equivalent points)."""
        inj = self.canonical().injection
        return (inj.layer, inj.tweak, inj.site, inj.head, inj.positions, inj.scale, inj.literal_hook, self.memory_key)

    @property
    def hook_name(self) -> str:
        return hook_name(self.injection)
