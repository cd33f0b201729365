"""Prefix reuse: run only the layers an injection can change.

An injection at layer L adds τ·v to block L's attention output. Everything that enters
block L (the residual stream ``blocks.L.hook_resid_pre``) is the clean pass's, whatever
τ, v or encoding. So the clean pass stores, per batch, the residual entering each
cached layer together with the keyword arguments the model hands every block (causal
mask, rotary position embeddings, position ids), and a trial runs blocks L..N-1 from
there, then the final norm and the unembedding at each prompt's last real token only.

The blocks run are the bridge's own modules, so every TransformerLens hook (the
injection's included) fires as in a full forward, and processed (``paper``) and ``raw``
weights are both exact. Trials that share a layer can be stacked along the batch axis
and share one suffix pass (:meth:`PrefixCache.last_logits` with ``copies``).

Injections at the last position only (``positions=last``) change nothing but the last
token at layers >= L: every earlier position's keys and values are the clean pass's. For
those, the keys and values of every layer are captured once (lazily, on the first such
trial, within the same byte budget), and a trial pushes only each prompt's last token
through layers L..N-1, attending to the clean keys/values of the earlier positions.

Memory is bounded by ``max_bytes``: when every layer does not fit, evenly spaced layers
are cached and a trial starts at the nearest cached layer at or below its own (the
layers in between are recomputed); with room for none, trials run the full forward.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ._models import LoadedModel
from ._runner import Batch

__all__ = ["PrefixCache", "choose_cached_layers"]

log = logging.getLogger("meminject")

Hook = tuple[str, Callable]

_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


def choose_cached_layers(n_layers: int, bytes_per_layer: int, max_bytes: int) -> list[int]:
    """Which layers' residuals to keep: all if they fit, else evenly spaced from layer 0."""
    if bytes_per_layer <= 0:
        return list(range(n_layers))
    fits = min(n_layers, int(max_bytes // bytes_per_layer))
    if fits <= 0:
        return []
    return sorted({(i * n_layers) // fits for i in range(fits)})


@dataclass
class _BatchPrefix:
    kwargs: dict[int, dict[str, Any]]  # layer -> what the model passes that block (mask, rotary embeddings, ...)
    residuals: dict[int, Tensor]  # layer -> residual entering that block (batch, pos, d_model)

    @property
    def uniform(self) -> bool:
        """Whether every block gets the same keyword arguments (the same objects). Not on Gemma 3:
        its sliding-window and full-attention layers get different rotary embeddings and masks."""
        first = self.kwargs[min(self.kwargs)]
        return all(kw.keys() == first.keys() and all(kw[k] is first[k] for k in kw) for kw in self.kwargs.values())


def _repeat_batch(value: Any, batch_size: int, copies: int) -> Any:
    """Repeat the batch axis ``copies`` times wherever a tensor carries it (nested too)."""
    if copies == 1:
        return value
    if isinstance(value, Tensor):
        if value.ndim and value.shape[0] == batch_size:
            return value.repeat(copies, *([1] * (value.ndim - 1)))
        return value
    if isinstance(value, tuple):
        return tuple(_repeat_batch(v, batch_size, copies) for v in value)
    if isinstance(value, list):
        return [_repeat_batch(v, batch_size, copies) for v in value]
    if isinstance(value, dict):
        return {k: _repeat_batch(v, batch_size, copies) for k, v in value.items()}
    return value


def _with_copies(kv: Tensor, copies: int) -> Tensor:
    """The clean keys or values (their last slot free) for ``copies`` stacked trials: the
    stored tensor itself for one (its last slot is overwritten by each trial), else one
    copy into a fresh buffer, trial-major."""
    if copies == 1:
        return kv
    out = torch.empty((copies, *kv.shape), dtype=kv.dtype, device=kv.device)
    out.copy_(kv.expand(copies, *kv.shape))
    return out.view(copies * kv.shape[0], *kv.shape[1:])


def _shared_repeat(value: Any, batch_size: int, copies: int, memo: dict[int, Any]) -> Any:
    if copies == 1:
        return value
    if id(value) not in memo:
        memo[id(value)] = (value, _repeat_batch(value, batch_size, copies))  # the value kept: its id stays unique
    return memo[id(value)][1]


class PrefixCache:
    """Residual streams entering the cached layers, for every batch of the clean pass."""

    def __init__(self, model: LoadedModel, batches: Sequence[Batch], *, max_bytes: int):
        self.model = model
        self.batches = list(batches)
        itemsize = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 4
        self.bytes_per_layer = sum(int(b.tokens.numel()) for b in self.batches) * model.d_model * itemsize
        self.layers = choose_cached_layers(model.n_layers, self.bytes_per_layer, int(max_bytes))
        self.max_bytes = int(max_bytes)
        self._prefixes: list[_BatchPrefix] = []
        self.supported = True
        self._kv: list[dict[int, tuple[Tensor, Tensor]]] | None = None  # per batch: layer -> clean (keys, values)
        self.kv_supported: bool | None = None  # None: not tried yet

    @property
    def nbytes(self) -> int:
        residuals = sum(int(t.numel()) * t.element_size() for p in self._prefixes for t in p.residuals.values())
        return residuals + self.kv_nbytes

    @property
    def kv_nbytes(self) -> int:
        return sum(
            int(t.numel()) * t.element_size() for per_batch in (self._kv or []) for kv in per_batch.values() for t in kv
        )

    def describe(self) -> str:
        if not self.layers:
            return f"prefix cache: off (one layer needs {self.bytes_per_layer / 2**20:.1f} MiB, over the budget); full forwards"
        span = "all layers" if len(self.layers) == self.model.n_layers else f"layers {self.layers}"
        kv = f" + last-token keys/values {self.kv_nbytes / 2**20:.1f} MiB" if self._kv else ""
        return f"prefix cache: residuals of {span}, {(self.nbytes - self.kv_nbytes) / 2**20:.1f} MiB ({self.bytes_per_layer / 2**20:.2f} MiB per layer){kv}"

    def capture_hooks(self, batch_position: int) -> list[tuple[torch.nn.Module, Callable]]:
        """Forward pre-hooks that record, during the clean pass of one batch, the block inputs:
        the residual entering each cached layer, and every block's keyword arguments (kept by
        reference: blocks that share a mask or rotary embeddings share one tensor)."""
        prefix = _BatchPrefix(kwargs={}, residuals={})
        self._prefixes.append(prefix)
        assert len(self._prefixes) == batch_position + 1, "capture batches in order"
        blocks = self.model.bridge.blocks
        cached = set(self.layers)
        hooks = []
        for layer in range(self.model.n_layers) if cached else []:

            def record(module, args, kwargs, layer=layer):  # noqa: ARG001 - torch pre-hook signature
                hidden = args[0] if args else kwargs.get("hidden_states")
                if not isinstance(hidden, Tensor):
                    self.supported = False
                    return None
                if layer in cached:
                    prefix.residuals[layer] = hidden.detach().clone()
                # A KV cache must not be kept (it would hold the clean pass's keys and grow per trial).
                recorded = {k: (None if k in _CACHE_KWARGS else v) for k, v in kwargs.items() if k != "hidden_states"}
                if "use_cache" in recorded:
                    recorded["use_cache"] = False
                prefix.kwargs[layer] = recorded
                return None

            hooks.append((blocks[layer], record))
        return hooks

    def start_layer(self, layer: int) -> int | None:
        """The cached layer a trial at ``layer`` starts from (None: run the full forward)."""
        if not self.supported:
            return None
        starts = [cached for cached in self.layers if cached <= layer]
        return max(starts) if starts else None

    def last_logits(
        self, batch_position: int, start: int, fwd_hooks: list[Hook], copies: int = 1
    ) -> Float[Tensor, "reads d_vocab"]:
        """Logits at the batch's read positions (by default each prompt's last real token),
        running blocks ``start``..N-1 only.

        With ``copies`` > 1 the batch is stacked that many times along the batch axis
        (trial-major: rows ``k*B .. (k+1)*B`` belong to trial ``k``) so several trials at
        one layer share a pass; the hooks see the stacked batch.
        """
        bridge = self.model.bridge
        batch = self.batches[batch_position]
        prefix = self._prefixes[batch_position]
        size = batch.tokens.shape[0]
        hidden = _repeat_batch(prefix.residuals[start], size, copies)
        repeated: dict[int, Any] = {}  # id of a layer's kwargs values -> repeated once, shared by the layers using it
        # the read positions (each prompt's last token, or every answer token), per stacked copy
        rows = torch.cat([batch.read_row + k * size for k in range(copies)])
        positions = batch.read_pos.repeat(copies)
        with torch.no_grad(), bridge.hooks(fwd_hooks=fwd_hooks):
            for layer in range(start, self.model.n_layers):
                kwargs = {k: _shared_repeat(v, size, copies, repeated) for k, v in prefix.kwargs[layer].items()}
                out = bridge.blocks[layer](hidden, **kwargs)
                hidden = out[0] if isinstance(out, tuple) else out
            last = hidden[rows, positions][:, None, :]  # only the positions that are read
            logits = bridge.unembed(bridge.ln_final(last))[:, 0, :]
        return logits.float()

    # ------------------------------------------------------------------ last-token path

    def ensure_kv(self, run_clean_batch: Callable[[int], None]) -> bool:
        """Capture every layer's clean keys/values once (one more clean pass); False if impossible.

        The attention bridges call ``_update_kv_cache(k, v)`` after RoPE and before the
        scores; recording what it returns gives exactly the keys/values the model uses.
        """
        if self.kv_supported is not None:
            return self.kv_supported
        self.kv_supported = False
        if not self.supported or not self.layers or not self._prefixes:
            return False
        if not all(prefix.uniform for prefix in self._prefixes):
            # the merged last-token batch carries one set of masks and rotary embeddings
            log.info(
                "positions=last: the layers get different masks or rotary embeddings (sliding-window attention); using the full suffix"
            )
            return False
        attns = [getattr(block, "attn", None) for block in self.model.bridge.blocks]
        if any(attn is None or not hasattr(attn, "_update_kv_cache") for attn in attns):
            log.info("positions=last: this architecture's attention has no KV hook; using the full suffix")
            return False
        budget = self.max_bytes - (self.nbytes - self.kv_nbytes)
        captured: list[dict[int, tuple[Tensor, Tensor]]] = []
        try:
            for position in range(len(self.batches)):
                per_layer: dict[int, tuple[Tensor, Tensor]] = {}
                for layer, attn in enumerate(attns):

                    def record(k: Tensor, v: Tensor, layer=layer, **_kwargs) -> tuple[Tensor, Tensor]:
                        per_layer[layer] = (k.detach().clone(), v.detach().clone())
                        return k, v

                    attn._update_kv_cache = record  # instance attribute shadows the method
                try:
                    run_clean_batch(position)
                finally:
                    for attn in attns:
                        attn.__dict__.pop("_update_kv_cache", None)
                if len(per_layer) != len(attns):
                    log.info("positions=last: keys/values were not captured at every layer; using the full suffix")
                    return False
                captured.append(per_layer)
                used = sum(int(t.numel()) * t.element_size() for b in captured for kv in b.values() for t in kv)
                if used > budget:
                    log.info("positions=last: keys/values need more than perf.prefix_cache_mb; using the full suffix")
                    return False
        except Exception as exc:  # noqa: BLE001 - an unsupported architecture falls back, never fails
            log.info("positions=last: key/value capture failed (%s); using the full suffix", exc)
            return False
        self._kv = captured
        self._merge_last_tokens()
        self.kv_supported = True
        return True

    def _merge_last_tokens(self) -> None:
        """One batch of every prompt's last token: keys/values padded to the widest prompt.

        With one query per prompt, all prompts fit one pass whatever their lengths, so a
        trial makes one call per layer instead of one per batch and layer.
        """
        widths = [b.tokens.shape[1] for b in self.batches]
        width = max(widths)
        index, residuals, allowed, position_ids, embeddings = [], {layer: [] for layer in self.layers}, [], [], []
        keys: dict[int, list[Tensor]] = {layer: [] for layer in range(self.model.n_layers)}
        values: dict[int, list[Tensor]] = {layer: [] for layer in range(self.model.n_layers)}
        for batch, prefix, kv in zip(self.batches, self._prefixes, self._kv):
            size, w = batch.tokens.shape
            rows = torch.arange(size, device=batch.tokens.device)
            last = batch.last_index
            index.append(batch.index)
            for layer in self.layers:
                residuals[layer].append(prefix.residuals[layer][rows, last])
            mask = torch.zeros(size, width + 1, dtype=torch.bool, device=batch.tokens.device)
            mask[:, :w] = batch.attention_mask.bool()
            mask[rows, last] = False  # the last position's clean key is replaced by its new one
            mask[:, width] = True
            allowed.append(mask)
            ids = prefix.kwargs[0].get("position_ids")
            if isinstance(ids, Tensor):
                position_ids.append(ids.expand(size, w)[rows, last][:, None])
            pe = prefix.kwargs[0].get("position_embeddings")
            if isinstance(pe, (tuple, list)) and all(isinstance(e, Tensor) and e.ndim == 3 for e in pe):
                embeddings.append(tuple(e.expand(size, w, e.shape[-1])[rows, last][:, None, :] for e in pe))
            for layer, (k, v) in kv.items():
                # pad the sequence axis (-2) to the common width, plus the slot of the last token's new key/value
                pad = [0, 0, 0, width + 1 - w]
                keys[layer].append(torch.nn.functional.pad(k, pad))
                values[layer].append(torch.nn.functional.pad(v, pad))
        kwargs = dict(self._prefixes[0].kwargs[0])  # every layer's (checked: uniform)
        kwargs["attention_mask"] = torch.cat(allowed)[:, None, None, :]  # (prompts, 1, query=1, keys=width+1)
        if position_ids:
            kwargs["position_ids"] = torch.cat(position_ids)
        if embeddings:
            kwargs["position_embeddings"] = tuple(torch.cat(parts) for parts in zip(*embeddings))
        if kwargs.get("cache_position") is not None:
            kwargs["cache_position"] = None
        self.last_batch = self._last_token_batch(torch.cat(index))
        self._last = {
            "kwargs": kwargs,
            "residuals": {layer: torch.cat(parts)[:, None, :] for layer, parts in residuals.items()},
            "kv": {layer: (torch.cat(keys[layer]), torch.cat(values[layer])) for layer in keys},
        }
        self._kv = [{}]  # the merged copy replaces the per-batch one
        self._kv[0] = self._last["kv"]

    def _last_token_batch(self, index: Tensor) -> Batch:
        """The merged batch: one row, one token and one read per prompt (the last-token path is
        first-token only)."""
        n = len(index)
        device = self.batches[0].tokens.device
        targets = [
            b.read_target if b.read_target is not None else torch.zeros(len(b.index), dtype=torch.long, device=device)
            for b in self.batches
        ]
        return Batch(
            index=index,
            tokens=torch.zeros(n, 1, dtype=torch.long, device=device),
            attention_mask=torch.ones(n, 1, dtype=torch.long, device=device),
            last_index=torch.zeros(n, dtype=torch.long, device=device),
            read_target=torch.cat(targets),
        )

    def last_token_logits(self, start: int, fwd_hooks: list[Hook], copies: int = 1) -> Float[Tensor, "rows d_vocab"]:
        """Logits at the last token when only the last token changes (``positions=last``).

        Every prompt's last token runs blocks ``start``..N-1 alone (sequence length 1), in
        one batch (:attr:`last_batch`), attending to the clean keys/values of its earlier
        real positions plus its own new key/value.
        """
        bridge = self.model.bridge
        size = self.last_batch.tokens.shape[0]
        hidden = _repeat_batch(self._last["residuals"][start], size, copies)
        kwargs = _repeat_batch(self._last["kwargs"], size, copies)
        attns = [block.attn for block in bridge.blocks]
        with torch.no_grad(), bridge.hooks(fwd_hooks=fwd_hooks):
            for layer in range(start, self.model.n_layers):
                keys, values = (_with_copies(t, copies) for t in self._last["kv"][layer])

                def extend(k: Tensor, v: Tensor, keys=keys, values=values, **_: Any) -> tuple[Tensor, Tensor]:
                    # the last slot is the new key/value's: written in place, no concatenation per layer
                    keys[..., -1:, :] = k
                    values[..., -1:, :] = v
                    return keys, values

                attns[layer]._update_kv_cache = extend
                try:
                    out = bridge.blocks[layer](hidden, **kwargs)
                finally:
                    attns[layer].__dict__.pop("_update_kv_cache", None)
                hidden = out[0] if isinstance(out, tuple) else out
            logits = bridge.unembed(bridge.ln_final(hidden))[:, 0, :]
        return logits.float()
