"""meminject: hyperparameter search and experiment tracking for memory injections.

Memory injections (Sakarvadia et al. 2023, arXiv 2309.05605) add an encoded "memory"
(the missing hop of a multi-hop prompt) to one layer's attention output. The formula is
:func:`meminject.engine.inject`; evaluation is :class:`meminject.engine.Evaluator`; the typed
run config is :class:`meminject.config.RunConfig`.

The packages are the layers, imports going one way (``tests/unit/test_layout.py`` checks it)::

    core → config → data → engine ─┐
              └──→ tracking ───────┴→ sweep → views → cli, the Python face

The Python face (:mod:`meminject._api`, for notebooks and scripts) sits on top, like the CLI:

======================  =====================================================================
:class:`Session`        a model and dataset loaded once; ``baseline()``, ``evaluate()``,
                        ``evaluate_many()`` into DataFrames on one clean pass; ``heads()``
:func:`run_sweep`       run or resume a study (``meminject sweep``'s keys); returns it
:func:`best`            ``meminject best``'s table, held-out report and verdicts (:class:`Best`)
:func:`figures`         a study's heatmap, scatter and Optuna figures
:func:`export`          one ranked site of a study as an export folder (``meminject export``)
:class:`Injection`      an exported site (``meminject export``): ``Injection.load(DIR)``,
                        ``applied(model, tokenizer, memory=...)`` on plain transformers
======================  =====================================================================
"""

from typing import Any

from ._api import ALIASES, Best, Session, best, export, figures, run_sweep  # light: heavy imports wait for first use
from .core._errors import ConfigError, DataError, MemInjectError, ModelError

__all__ = [
    "Session",
    "Best",
    "run_sweep",
    "best",
    "figures",
    "export",
    "ALIASES",
    "MemInjectError",
    "ConfigError",
    "DataError",
    "ModelError",
    "inject",
    "unembed_memory",
    "embed_memory",
    "Injection",
]
__version__ = "0.1.0"

_ENGINE = ("inject", "unembed_memory", "embed_memory", "Injection")


def __getattr__(name: str) -> Any:
    """The formula's names, imported on first use: ``python -m meminject`` imports this package
    before its entry point, which must install the Ctrl-C handler before torch is imported."""
    if name == "Injection":  # an exported injection on a plain transformers model
        from .engine._exported import Injection

        return Injection
    if name in _ENGINE:
        from .engine import _injection

        return getattr(_injection, name)
    raise AttributeError(f"module 'meminject' has no attribute {name!r}")
