"""Memories: which text is injected for each prompt, and how it becomes a vector.

Types (``memory.type``): ``correct`` is the row's explicit entity (the missing hop).
Control types (part of speech, random words, random vectors) slot in here.

Encodings (``memory.encoding``), see :mod:`meminject.injection` for the formulas:
``unembed`` and ``embed`` read the (possibly processed) weight matrices; ``layer`` runs
the memory text (with BOS, as in the paper) and takes the attention output of its last
token at the injection layer.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import ConfigError, DataError
from .injection import embed_memory, unembed_memory
from .models import LoadedModel
from .runner import capture_last_position, make_batches

__all__ = ["MEMORY_TYPES", "ENCODINGS", "memory_texts", "encode_memories", "attn_out_hook"]

MEMORY_TYPES = ("correct",)
ENCODINGS = ("unembed", "embed", "layer")


def attn_out_hook(layer: int) -> str:
    """The hook the paper's head injection reduces to: the layer's summed attention output."""
    return f"blocks.{layer}.hook_attn_out"


def memory_texts(frame: Any, memory_cfg: Any) -> list[str]:
    """The memory text of every prompt, for the configured memory type."""
    kind = str(memory_cfg.type)
    if kind == "correct":
        return [str(text) for text in frame["explicit_entity"]]
    raise ConfigError(f"memory.type={kind!r} is not one of {', '.join(MEMORY_TYPES)}")


def memory_tokens(model: LoadedModel, texts: Sequence[str], rows: Sequence[int], *, bos: bool) -> list[list[int]]:
    """Tokenize memories; a memory with no tokens cannot be injected and is refused."""
    token_lists = []
    for text, row in zip(texts, rows):
        ids = model.tokenize(text, bos=bos)
        if not model.tokenize(text, bos=False):
            raise DataError(f"row {row}: memory {text!r} tokenizes to nothing")
        token_lists.append(ids)
    return token_lists


def encode_memories(
    model: LoadedModel,
    texts: Sequence[str],
    rows: Sequence[int],
    encoding: str,
    layer: int,
    *,
    max_batch_tokens: int = 4096,
) -> Float[Tensor, "n d_model"]:
    """One vector per memory text, in the residual space of ``model``."""
    if encoding in ("unembed", "embed"):
        token_lists = memory_tokens(model, texts, rows, bos=False)
        if encoding == "unembed":
            W_U = model.W_U
            vectors = [unembed_memory(ids, W_U) for ids in token_lists]
        else:
            W_E = model.W_E
            vectors = [embed_memory(ids, W_E) for ids in token_lists]
        return torch.stack(vectors).float()
    if encoding == "layer":
        token_lists = memory_tokens(model, texts, rows, bos=True)
        out = torch.zeros(len(texts), model.d_model, device=model.device)
        for batch in make_batches(token_lists, pad_id=model.pad_id, device=model.device, max_batch_tokens=max_batch_tokens):
            out[batch.index.to(model.device)] = capture_last_position(model, batch, attn_out_hook(layer), stop_at_layer=layer + 1)
        return out
    raise ConfigError(f"memory.encoding={encoding!r} is not one of {', '.join(ENCODINGS)}")
