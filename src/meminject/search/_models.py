"""The models a sweep runs: its model axis's configs and their shapes, from configs alone (no weights)."""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig, RunConfig, load_run_config
from ..engine._models import model_shape
from ._settings import SweepSpec
from ._space import parse_space

__all__ = ["sweep_models", "model_sizes"]


def sweep_models(spec: SweepSpec, base: RunConfig) -> list[ModelConfig]:
    """The model configs a sweep runs: its model axis's values, or the base config's model."""
    if "model" not in spec.params:
        return [base.model]
    names = [str(m) for m in (parse_space({"model": spec.params["model"]}).axes[0].discrete_values or [])]
    return [load_run_config([*spec.overrides, f"model={m}"]).model for m in names]  # one compose per model, per process


def model_sizes(spec: SweepSpec, base: RunConfig) -> dict[str, Any]:
    """Layer/head counts of the sweep's model(s), from configs alone (the smallest over a model axis)."""
    shapes = [model_shape(model) for model in sweep_models(spec, base)]
    smallest = min(shapes, key=lambda s: s["n_layers"])
    return {**smallest, "n_heads": min(s["n_heads"] for s in shapes), "tied": all(s["tied"] for s in shapes)}
