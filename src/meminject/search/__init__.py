"""What a sweep tries: its preset and keys, the space over the model, the sampler and pruner.

A sweep preset (``sweeps/NAME.yaml``) names what it optimizes, a sampler, a trial budget,
fixed config and the searched axes (Hydra sweeper grammar). This package parses it once into
a :class:`SweepSpec`, resolves the space against the model's shape (configs only, no weights)
and creates or resumes the Optuna study, with the grid queued.

=================  ======================================================================
``_settings``      presets and the stored :class:`SweepSpec`
``_keys``          each command's keys and their checks
``_space``         the Hydra sweeper grammar as typed axes (range, choice, interval, logrange)
``_grid``          grid points: canonical keys, the queue, the pruning-friendly order
``_edges``         a best τ at the end of its searched range, and the override that extends it
``_pruning``       the paired per-prompt pruner and the prompt-chunk monitor
``_samplers``      TPE with a bounded memory (flat cost per trial as the study grows)
``_models``        the models a sweep spans (a model axis), their sizes
``_study``         the space against the model, sampler, budget, grid queue, storage lock
=================  ======================================================================

Example::

    from meminject.search import load_sweep, prepare_study
    spec, _ = load_sweep(["sweep=smoke", "model=tiny", "study=demo"])
    study, space, base = prepare_study(spec, "/tmp/optuna.journal")
"""

from ._samplers import BoundedTPESampler
from ._settings import SweepSpec, load_sweep, presets
from ._space import SearchSpace, parse_space
from ._study import budget, prepare_study, resolve_space, stored_spec

__all__ = [
    "SweepSpec",
    "load_sweep",
    "presets",
    "SearchSpace",
    "parse_space",
    "prepare_study",
    "resolve_space",
    "stored_spec",
    "budget",
    "BoundedTPESampler",
]
