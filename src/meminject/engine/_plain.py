"""An exported injection on a plain Hugging Face model: torch forward hooks, no TransformerLens.

The engine adds τ·v at a TransformerLens hook of the bridge; on the Hugging Face modules the
same places are (``tests/unit/engine/test_gemma.py`` checks the Gemma ones against the engine):

==============  ============================================  =================================
hook            Llama (SmolLM2)                               Gemma 3 (sandwich norms)
==============  ============================================  =================================
``attn_out``    the output of ``layers[L].self_attn``          after ``post_attention_layernorm``
``mlp_out``     the output of ``layers[L].mlp``                after ``post_feedforward_layernorm``
``resid_pre``   the input of ``layers[L]``                     the input of ``layers[L]``
==============  ============================================  =================================

The memory vector is encoded from the raw weights as the engine does (:mod:`._memories`):
``unembed`` sums the memory tokens' rows of ``lm_head``, ``embed`` those of the embedding
(no √d scaling), ``layer`` runs the memory text (with BOS) and takes the attention output of its
last token at the layer. ``head_subspace`` keeps the part head h's rows of ``o_proj`` can write;
``relative`` rescales v to the recorded residual norm before τ.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from ..core._errors import ConfigError, ModelError
from ._injection import head_output_component

__all__ = ["decoder_layers", "hook_module", "plain_memory_vector", "add_hook", "plain_model", "token_ids"]


def decoder_layers(model: Any) -> Any:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ModelError(
            f"{type(model).__name__} is not a supported plain transformers model (meminject hooks Llama- and Gemma-style decoders: model.model.layers)"
        )
    return layers


def _sandwich(block: Any) -> bool:
    return hasattr(block, "post_feedforward_layernorm")


def hook_module(model: Any, hook: str, layer: int) -> tuple[torch.nn.Module, str]:
    """The Hugging Face module that plays ``hook`` of block ``layer``, and how to hook it
    (``out``: its output, ``in``: its first input)."""
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ConfigError(f"layer {layer} is out of range for this model (layers 0..{len(layers) - 1})")
    block = layers[layer]
    if hook == "resid_pre":
        return block, "in"
    if hook == "attn_out":
        return (block.post_attention_layernorm if _sandwich(block) else block.self_attn), "out"
    if hook == "mlp_out":
        return (block.post_feedforward_layernorm if _sandwich(block) else block.mlp), "out"
    raise ConfigError(f"hook {hook!r} is not one of attn_out, mlp_out, resid_pre")


def token_ids(tokenizer: Any, text: str, *, bos: bool, bos_id: int | None) -> list[int]:
    """Token ids as the engine makes them (:meth:`LoadedModel.tokenize`)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return [int(bos_id), *ids] if bos and bos_id is not None else ids


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def plain_memory_vector(model: Any, tokenizer: Any, record: Any, text: str) -> Tensor:
    """v for one memory text, float32, on the model's device: encoded, projected (head_subspace)
    and rescaled (relative) as the engine does."""
    ids = token_ids(tokenizer, text, bos=False, bos_id=None)
    if not ids:
        raise ConfigError(f"memory {text!r} tokenizes to nothing")
    if record.encoding in ("unembed", "embed"):
        matrix = (
            model.get_output_embeddings().weight
            if record.encoding == "unembed"
            else model.get_input_embeddings().weight
        )
        vector = matrix[sorted(set(ids))].float().sum(0)
    else:  # layer: the memory text through the model, the last token's attention output at the layer
        block = decoder_layers(model)[record.layer]
        module = block.post_attention_layernorm if _sandwich(block) else block.self_attn
        captured: dict[str, Tensor] = {}
        handle = module.register_forward_hook(lambda m, a, out: captured.setdefault("v", _first(out)[0, -1].float()))
        full = token_ids(tokenizer, text, bos=record.model.prepend_bos, bos_id=record.model.bos_token_id)
        try:
            with torch.no_grad():
                model(torch.tensor([full], device=model.device))
        finally:
            handle.remove()
        vector = captured["v"]
    if record.site == "head_subspace":
        attn = decoder_layers(model)[record.layer].self_attn
        d_head = attn.o_proj.weight.shape[1] // model.config.num_attention_heads
        W_O = attn.o_proj.weight[:, record.head * d_head : (record.head + 1) * d_head].T.float()  # (d_head, d_model)
        vector = head_output_component(vector[None], W_O)[0]
    if record.scale == "relative":
        vector = vector / vector.norm().clamp_min(1e-12) * float(record.residual_norm)
    return vector


def _added(x: Tensor, vector: Tensor, tau: float, positions: str) -> Tensor:
    """x + τ·v at every position (``all``) or the last of this forward (``last``)."""  # x: (batch, pos, d_model)
    delta = (tau * vector).to(x.dtype)
    if positions == "all":
        return x + delta
    x = x.clone()
    x[:, -1, :] = x[:, -1, :] + delta.reshape(-1, x.shape[-1])  # (n or 1, d_model)
    return x


@contextlib.contextmanager
def add_hook(
    model: Any, hook: str, layer: int, vector: Callable[[], Tensor], tau: float, positions: str
) -> Iterator[None]:
    """τ·v added at ``hook`` of block ``layer`` while inside; the hook is removed on exit, also on
    error. ``vector()`` gives the current memory (so one hook serves several prompts)."""
    module, side = hook_module(model, hook, layer)
    if side == "in":

        def pre(m, args, kwargs):  # noqa: ARG001 - torch pre-hook signature
            if args:
                return (_added(args[0], vector(), tau, positions), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": _added(kwargs["hidden_states"], vector(), tau, positions)}

        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:

        def post(m, args, out):  # noqa: ARG001 - torch hook signature
            if isinstance(out, tuple):
                return (_added(out[0], vector(), tau, positions), *out[1:])
            return _added(out, vector(), tau, positions)

        handle = module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


@functools.lru_cache(maxsize=4)
def plain_model(model_cfg: Any) -> tuple[Any, Any]:
    """(float32 Hugging Face model, tokenizer) of a ``model`` config, loaded by plain transformers
    from the same source as the engine (a packaged model's safetensors copy, the seeded tiny one),
    with eager attention as the bridge computes it."""
    from ._models import _load_pretrained
    from ._packaged import load_packaged
    from ._tiny import build_tiny

    source = str(model_cfg.source)
    if source == "gguf_package":
        hf, tokenizer = load_packaged(model_cfg.package, model_cfg.name, torch.float32)
    elif source == "tiny":
        hf, tokenizer = build_tiny(model_cfg.tiny, torch.float32)
    else:
        hf, tokenizer = _load_pretrained(str(model_cfg.hf_name), torch.float32)
    hf.set_attn_implementation(
        "eager"
    )  # the bridge's attention: SDPA rounds differently (up to ~1e-4 under a strong injection)
    hf.eval()
    for param in hf.parameters():
        param.requires_grad_(False)
    return hf, tokenizer
