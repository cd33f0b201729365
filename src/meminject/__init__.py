"""meminject: hyperparameter search and experiment tracking for memory injections.

Memory injections (Sakarvadia et al. 2023, arXiv 2309.05605) add an encoded "memory"
(the missing hop of a multi-hop prompt) to one layer's attention output. The formula is
:func:`meminject.injection.inject`; evaluation is :class:`meminject.evaluation.Evaluator`.
"""

from .core._errors import ConfigError, DataError, MemInjectError, ModelError
from .engine._injection import embed_memory, inject, unembed_memory

__all__ = ["MemInjectError", "ConfigError", "DataError", "ModelError", "inject", "unembed_memory", "embed_memory"]
__version__ = "0.1.0"
