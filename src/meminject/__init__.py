"""meminject: hyperparameter search and experiment tracking for memory injections.

Memory injections (Sakarvadia et al. 2023, arXiv 2309.05605) add an encoded "memory"
(the missing hop of a multi-hop prompt) to one layer's attention output. The formula is
:func:`meminject.engine.inject`; evaluation is :class:`meminject.engine.Evaluator`; the typed
run config is :class:`meminject.config.RunConfig`.

The packages are the layers, imports going one way (``tests/unit/test_layout.py`` checks it)::

    core → config → data → engine ─┐
              └──→ tracking ───────┴→ sweep → views → cli
"""

from .core._errors import ConfigError, DataError, MemInjectError, ModelError
from .engine._injection import embed_memory, inject, unembed_memory

__all__ = ["MemInjectError", "ConfigError", "DataError", "ModelError", "inject", "unembed_memory", "embed_memory"]
__version__ = "0.1.0"
