"""The plain reference: one prompt at a time, the paper notebook's way.

Deliberately independent of meminject's fast path: TransformerLens tokenization
(``to_tokens``), a full forward per prompt, full-sequence logits, the multi-hot memory
times W_Uᵀ with an einsum, and the injection on one head's ``hook_result`` (the paper's
hook) or ``hook_attn_out``.
"""

from __future__ import annotations

import torch


def reference_memory_vector(bridge, memory: str, encoding: str, layer: int) -> torch.Tensor:
    if encoding == "layer":
        _, cache = bridge.run_with_cache(bridge.to_tokens(memory))
        return cache[f"blocks.{layer}.hook_attn_out"][0, -1]
    memory_tokens = bridge.to_tokens(memory, prepend_bos=False)[0]
    one_hot = torch.zeros(bridge.cfg.d_vocab)
    one_hot[memory_tokens] = 1.0  # a repeated token is set once, as in the paper
    if encoding == "unembed":
        return torch.einsum("v,vd->d", one_hot, bridge.W_U.T)
    if encoding == "embed":
        return torch.einsum("v,vd->d", one_hot, bridge.W_E)
    raise ValueError(encoding)


def reference_answer_probs(
    bridge,
    prompt: str,
    answer: str,
    memory: str,
    *,
    layer: int,
    tweak: float,
    encoding: str = "unembed",
    positions: str = "all",
    head: int | None = 0,
) -> tuple[float, float]:
    """(P(answer) before, after) for one prompt; ``head=None`` injects at hook_attn_out."""
    tokens = bridge.to_tokens(prompt)
    answer_token = bridge.to_tokens(answer, prepend_bos=False)[0][0]
    vector = reference_memory_vector(bridge, memory, encoding, layer)
    before = torch.softmax(bridge(tokens)[0, -1], dim=-1)[answer_token].item()

    def add_to_head(result, hook):  # (batch, pos, head, d_model)
        result = result.clone()
        if positions == "all":
            result[:, :, head, :] += vector * tweak
        else:
            result[:, -1, head, :] += vector * tweak
        return result

    def add_to_attn_out(attn_out, hook):  # (batch, pos, d_model)
        attn_out = attn_out.clone()
        if positions == "all":
            attn_out[:, :, :] += vector * tweak
        else:
            attn_out[:, -1, :] += vector * tweak
        return attn_out

    if head is None:
        patched = bridge.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_attn_out", add_to_attn_out)])
    else:
        bridge.set_use_attn_result(True)
        try:
            patched = bridge.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_result", add_to_head)])
        finally:
            bridge.set_use_attn_result(False)
    after = torch.softmax(patched[0, -1], dim=-1)[answer_token].item()
    return before, after


def reference_last_logits(
    bridge, prompt: str, memory: str, *, layer: int, tweak: float, encoding: str = "unembed"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, injected) logits at the prompt's last position; the memory added at hook_attn_out, every position."""
    tokens = bridge.to_tokens(prompt)
    vector = reference_memory_vector(bridge, memory, encoding, layer)

    def add(attn_out, hook):
        return attn_out + vector * tweak

    clean = bridge(tokens)[0, -1]
    patched = bridge.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_attn_out", add)])[0, -1]
    return clean, patched


# ---------------------------------------------------------------- plain transformers, no bridge
# For Gemma: τ·v added with torch hooks on the Hugging Face modules themselves, one prompt at a
# time (after post_attention_layernorm for attn_out, post_feedforward_layernorm for mlp_out, into
# the decoder layer's input for resid_pre).


def _ids(tokenizer, text: str, bos: bool) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id, *ids] if bos else ids


def hf_memory_vector(model, tokenizer, memory: str, encoding: str, layer: int) -> torch.Tensor:
    if encoding in ("unembed", "embed"):
        ids = sorted(set(_ids(tokenizer, memory, bos=False)))  # multi-hot: a repeated token counts once
        matrix = (
            model.lm_head.weight if encoding == "unembed" else model.model.embed_tokens.weight
        )  # raw rows: no sqrt(d_model)
        return matrix[ids].sum(0)
    captured = {}
    handle = model.model.layers[layer].post_attention_layernorm.register_forward_hook(
        lambda m, a, out: captured.setdefault("v", out[0, -1])
    )
    try:
        with torch.no_grad():
            model(torch.tensor([_ids(tokenizer, memory, bos=True)]))
    finally:
        handle.remove()
    return captured["v"]


def hf_injected_logprob(
    model, tokenizer, prompt: str, answer: str, *, layer: int, hook: str, vector, tweak: float, positions: str
) -> float:
    """log P(answer's first token | prompt) with τ·v added at one place of block ``layer``."""
    ids = torch.tensor([_ids(tokenizer, prompt, bos=True)])
    target = _ids(tokenizer, answer, bos=False)[0]
    handles = []
    if vector is not None:

        def add(out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            if positions == "all":
                out[:, :, :] += tweak * vector
            else:
                out[:, -1, :] += tweak * vector
            return out

        block = model.model.layers[layer]
        if hook == "resid_pre":
            handles.append(
                block.register_forward_pre_hook(
                    lambda m, args, kwargs: (
                        ((add(args[0]), *args[1:]), kwargs)
                        if args
                        else (args, {**kwargs, "hidden_states": add(kwargs["hidden_states"])})
                    ),
                    with_kwargs=True,
                )
            )
        else:
            norm = block.post_attention_layernorm if hook == "attn_out" else block.post_feedforward_layernorm
            handles.append(norm.register_forward_hook(lambda m, a, out: add(out)))
    try:
        with torch.no_grad():
            logits = model(ids).logits[0, -1].float()
    finally:
        for handle in handles:
            handle.remove()
    return float(torch.log_softmax(logits, -1)[target])
