"""The engine layer: models, memories, the injection formula and the evaluator.

:func:`inject` is the formula (one pure function); :class:`Evaluator` holds one (model,
dataset) with its clean pass and prefix cache and evaluates any :class:`InjectionSpec`.

Example::

    from meminject.config import load_run_config
    from meminject.data import load_dataset
    from meminject.engine import Evaluator, InjectionSpec, load_model
    run = load_run_config(["model=tiny", "data.limit=4", "injection.layer=1"])
    evaluator = Evaluator.from_config(load_model(run.model), load_dataset(run.data), run)
    result = evaluator.evaluate(InjectionSpec.from_config(run), run.memory)
    print(len(result.per_prompt))   # 4
"""

from ._damage import rest_kl, rest_logprobs
from ._exported import Injection
from ._injection_file import InjectionRecord, read_record, weights_fingerprint
from ._evaluation import EvalResult, Evaluator, InjectionSpec, Monitor
from ._injection import embed_memory, head_output_component, inject, multi_hot, position_mask, unembed_memory
from ._memories import encode_memories, memory_texts, site_pos, word_pools, word_source
from ._models import LoadedModel, load_model, model_shape, resolve_depth, resolve_device
from ._stats import summarize, typical_norm

__all__ = [
    "Injection",
    "InjectionRecord",
    "read_record",
    "weights_fingerprint",
    "Evaluator",
    "EvalResult",
    "Monitor",
    "InjectionSpec",
    "inject",
    "position_mask",
    "unembed_memory",
    "embed_memory",
    "multi_hot",
    "head_output_component",
    "encode_memories",
    "memory_texts",
    "site_pos",
    "word_pools",
    "word_source",
    "LoadedModel",
    "load_model",
    "model_shape",
    "resolve_depth",
    "resolve_device",
    "rest_kl",
    "rest_logprobs",
    "summarize",
    "typical_norm",
]
