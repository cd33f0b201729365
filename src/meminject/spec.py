"""One point of the search space: where a memory goes, how strongly, which memory, how encoded.

:class:`InjectionSpec` is the engine's view of a trial; :mod:`meminject.site` derives the
site record (tables, Optuna attributes, MLflow params) from it. :func:`stacked_hooks` turns
same-layer points into one hook (the formula itself is :mod:`meminject.injection`'s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .errors import ConfigError
from .injection import inject, position_mask

if TYPE_CHECKING:
    from .models import LoadedModel
    from .runner import Batch

__all__ = ["InjectionSpec", "stacked_hooks", "SITES", "SCALES", "POSITIONS", "ANSWER_METRICS"]

SITES = ("layer", "head", "head_subspace")
SCALES = ("absolute", "relative")
POSITIONS = ("all", "last")
ANSWER_METRICS = ("first_token", "sequence")


@dataclass(frozen=True)
class InjectionSpec:
    """One point of the search space: where, how strong, which memory and how encoded."""

    layer: int
    tweak: float
    site: str = "layer"
    head: int | None = None
    positions: str = "all"
    memory_type: str = "correct"
    encoding: str = "unembed"
    literal_hook: bool = False  # head site through hook_result (slow) instead of hook_attn_out
    scale: str = "absolute"  # relative: v rescaled to the layer's mean residual norm before τ

    @classmethod
    def from_config(cls, cfg: Any) -> "InjectionSpec":
        inj, mem = cfg.injection, cfg.memory
        head = inj.head
        return cls(
            layer=_as_int(inj.layer, "injection.layer"),
            tweak=_as_float(inj.tweak, "injection.tweak"),
            site=str(inj.site),
            head=None if head is None else _as_int(head, "injection.head"),
            positions=str(inj.positions),
            memory_type=str(mem.type),
            encoding=str(mem.encoding),
            literal_hook=bool(inj.literal_hook),
            scale=str(inj.scale),
        )

    def canonical(self) -> "InjectionSpec":
        """The equivalent point that is actually computed.

        Adding τ·v to one head's result equals adding it to the summed attention output,
        whatever the head: every ``site=head`` point maps to its layer point, so a head
        axis costs nothing and is never evaluated twice.
        """
        if self.site == "head" and not self.literal_hook:
            return replace(self, site="layer", head=None)
        return self

    @property
    def hook_name(self) -> str:
        if self.site == "head" and self.literal_hook:
            return f"blocks.{self.layer}.attn.hook_result"
        from .memories import attn_out_hook

        return attn_out_hook(self.layer)

    def validate(self, model: LoadedModel | None = None) -> None:
        """Refuse impossible points with the config key to fix; bounds need the model."""
        from .memories import ENCODINGS, MEMORY_TYPES

        if self.site not in SITES:
            raise ConfigError(f"injection.site={self.site!r} is not one of {', '.join(SITES)}")
        if self.positions not in POSITIONS:
            raise ConfigError(f"injection.positions={self.positions!r} is not one of {', '.join(POSITIONS)}")
        if not math.isfinite(self.tweak) or self.tweak < 0:
            raise ConfigError(f"injection.tweak={self.tweak} must be a finite number >= 0")
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"memory.encoding={self.encoding!r} is not one of {', '.join(ENCODINGS)}")
        if self.memory_type not in MEMORY_TYPES:
            raise ConfigError(f"memory.type={self.memory_type!r} is not one of {', '.join(MEMORY_TYPES)}")
        if self.scale not in SCALES:
            raise ConfigError(f"injection.scale={self.scale!r} is not one of {', '.join(SCALES)}")
        if self.site == "head" and self.head is None:
            raise ConfigError("injection.site=head needs injection.head (any head: they are equivalent)")
        if self.site == "head_subspace" and self.head is None:
            raise ConfigError("injection.site=head_subspace needs injection.head (the head whose output space receives the memory)")
        if model is None:
            return
        if not 0 <= self.layer < model.n_layers:
            raise ConfigError(f"injection.layer={self.layer} is out of range for {model.name} (layers 0..{model.n_layers - 1})")
        if self.site in ("head", "head_subspace") and not 0 <= int(self.head) < model.n_heads:
            raise ConfigError(f"injection.head={self.head} is out of range for {model.name} (heads 0..{model.n_heads - 1})")


def _as_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) and not (isinstance(value, str) and value.lstrip("-").isdigit()):
        raise ConfigError(f"{key}={value!r} must be an integer")
    return int(value)


def _as_float(value: Any, key: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}={value!r} must be a number") from exc


def stacked_hooks(specs: Sequence[InjectionSpec], vectors: Sequence[Float[Tensor, "n d_model"]], batch: Batch, device: torch.device,
                  last_token_only: bool = False) -> list[tuple[str, Callable]]:
    """One hook for ``len(specs)`` same-layer trials stacked along the batch axis.

    ``vectors[k]`` holds trial k's memory per prompt (rows indexed by ``batch.index``);
    ``last_token_only``: the pass carries only each prompt's last token (sequence length 1).
    """
    spec = specs[0]
    index = batch.index.to(device)
    memory = torch.cat([v[index] for v in vectors])  # (copies * batch, d_model)
    tweak = torch.cat([torch.full((len(index),), float(s.tweak), device=device) for s in specs])
    if last_token_only:
        mask = torch.ones(len(specs) * len(index), 1, device=device)
    else:
        mask = torch.cat([position_mask(batch.attention_mask, batch.prompt_last, s.positions) for s in specs])
    if spec.site == "head" and spec.literal_hook:
        def add_to_head(result: Tensor, hook) -> Tensor:  # noqa: ARG001 # (batch, pos, head, d_model)
            result = result.clone()
            result[:, :, spec.head, :] = inject(result[:, :, spec.head, :], memory.to(result.dtype), tweak, mask)
            return result
        return [(spec.hook_name, add_to_head)]

    def add_to_layer(attn_out: Tensor, hook) -> Tensor:  # noqa: ARG001 # (batch, pos, d_model)
        return inject(attn_out, memory.to(attn_out.dtype), tweak, mask)
    return [(spec.hook_name, add_to_layer)]
