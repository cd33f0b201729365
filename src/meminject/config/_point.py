"""A trial point: the injection and the memory of one trial, and what derives from them.

One definition each of: the point that is actually computed (:meth:`TrialPoint.canonical`),
its identity (:attr:`TrialPoint.key`, the evaluator's cache key and, with the rest of the run's
result-bearing config, the trial key :func:`trial_key`) and the hook it touches
(:func:`hook_name`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._choices import WORD_CONTROLS, relevant_keys

if TYPE_CHECKING:
    from ._schema import InjectionConfig, MemoryConfig, RunConfig

__all__ = ["TrialPoint", "memory_key", "site_pos", "hook_name", "attn_out_hook", "trial_key", "RESULT_FREE_SECTIONS"]

# Config sections that never change a trial's numbers (where results go, how fast they come).
RESULT_FREE_SECTIONS = ("tracking.", "perf.", "output_dir")


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


def trial_key(run: RunConfig) -> str:
    """What a trial computes, as canonical JSON: the result-bearing config with the injection
    replaced by its canonical point and without the memory keys its memory type ignores."""
    point = run.point
    inj = point.canonical().injection
    config = {k: v for k, v in run.flat().items() if not k.startswith(("injection.", "memory.", *RESULT_FREE_SECTIONS))}
    config.update({f"memory.{k}": v for k, v in point.memory_key})
    config["injection"] = [inj.layer, inj.tweak, inj.site, inj.head, inj.positions, inj.scale]
    return json.dumps(config, sort_keys=True, default=str)
