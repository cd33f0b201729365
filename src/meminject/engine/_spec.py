"""One point of the search space: where a memory goes, how strongly, which memory, how encoded.

:class:`InjectionSpec` is the engine's view of a trial; :mod:`meminject.site` derives the
site record (tables, Optuna attributes, MLflow params) from it. :func:`stacked_hooks` turns
same-layer points into one hook (the formula itself is :mod:`meminject.injection`'s).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..config._choices import ANSWER_METRICS, POSITIONS, SCALES, SITES  # noqa: F401 - re-exported
from ..config._point import hook_name, layer_at_depth
from ..core._errors import ConfigError, MemInjectError
from ._injection import inject, position_mask

if TYPE_CHECKING:
    from ..config._schema import RunConfig
    from ..config._point import TrialPoint
    from ._models import LoadedModel
    from ._runner import Batch

__all__ = ["InjectionSpec", "stacked_hooks", "SITES", "SCALES", "POSITIONS", "ANSWER_METRICS"]


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
    hook: str = "attn_out"  # attn_out | mlp_out | resid_pre: where in block L (config._point.hook_name)
    depth: float | None = None  # the relative depth that set ``layer`` (engine.resolve_depth), if any

    @classmethod
    def from_config(cls, run: RunConfig) -> "InjectionSpec":
        """The engine's view of a run's trial point (:attr:`RunConfig.point`)."""
        return cls.from_point(run.point)

    @classmethod
    def from_point(cls, point: TrialPoint) -> "InjectionSpec":
        inj, mem = point.injection, point.memory
        return cls(
            layer=inj.layer,
            tweak=inj.tweak,
            site=inj.site,
            head=inj.head,
            positions=inj.positions,
            memory_type=mem.type,
            encoding=mem.encoding,
            literal_hook=inj.literal_hook,
            scale=inj.scale,
            hook=inj.hook,
            depth=inj.depth,
        )

    def canonical(self) -> "InjectionSpec":
        """The equivalent point that is actually computed (:meth:`TrialPoint.canonical`: every
        ``site=head`` point is its layer point)."""
        if self.site == "head" and not self.literal_hook:
            return replace(self, site="layer", head=None)
        return self

    @property
    def hook_name(self) -> str:
        return hook_name(self)

    def validate(self, model: LoadedModel | None = None) -> None:
        """Refuse a point the model cannot take, with the config key to fix (the values
        themselves were checked when the config was built: :mod:`meminject.config`)."""
        if self.site in ("head", "head_subspace") and self.head is None:
            raise ConfigError(
                f"injection.site={self.site} needs injection.head (the head whose output space receives the memory; for site=head any head: they are equivalent)"
            )
        if model is None:
            return
        if self.site != "layer" and getattr(model, "sandwich_norms", False):
            raise ConfigError(
                f"injection.site={self.site} is undefined on {model.name}: its post-attention norm comes after W_O, so one head's share "
                "of the attention output is not what reaches the residual stream; use injection.site=layer"
            )
        if self.depth is not None and self.layer != layer_at_depth(self.depth, model.n_layers):
            raise MemInjectError(  # a caller skipped engine.resolve_depth: never evaluate the default layer instead
                f"injection.depth={self.depth:g} was not resolved to a layer of {model.name} (got layer {self.layer})"
            )
        if not 0 <= self.layer < model.n_layers:
            raise ConfigError(
                f"injection.layer={self.layer} is out of range for {model.name} (layers 0..{model.n_layers - 1})"
            )
        if self.site in ("head", "head_subspace") and not 0 <= int(self.head) < model.n_heads:
            raise ConfigError(
                f"injection.head={self.head} is out of range for {model.name} (heads 0..{model.n_heads - 1})"
            )


def stacked_hooks(
    specs: Sequence[InjectionSpec],
    vectors: Sequence[Float[Tensor, "n d_model"]],
    batch: Batch,
    device: torch.device,
    last_token_only: bool = False,
) -> list[tuple[str, Callable]]:
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
