"""Evaluate one injection configuration over a dataset.

Per prompt: the first answer token, P(answer | obscure prompt) before and after the
injection, P(answer | explicit prompt), the answer's rank before/after and the top-k
tokens after. The objective is the mean answer-probability gain (after − before).

The clean quantities (before, explicit) depend only on (model, weights, dataset), so an
:class:`Evaluator` computes them once and every configuration reuses them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .data import Dataset
from .errors import ConfigError, DataError
from .injection import inject, position_mask
from .memories import attn_out_hook, encode_memories, memory_texts
from .models import LoadedModel
from .runner import Batch, last_position_logits, make_batches

__all__ = ["InjectionSpec", "EvalResult", "Evaluator", "summarize", "SITES", "POSITIONS"]

SITES = ("layer", "head")
POSITIONS = ("all", "last")


@dataclass(frozen=True)
class InjectionSpec:
    """One point of the search space: where, how strong, which memory and how encoded."""

    layer: int
    tweak: float
    site: str = "layer"
    head: int | None = None
    positions: str = "all"
    memory_type: str = "correct"
    encoding: str = "unembed"
    literal_hook: bool = False  # head site through hook_result (slow) instead of hook_attn_out

    @classmethod
    def from_config(cls, cfg: Any) -> "InjectionSpec":
        inj, mem = cfg.injection, cfg.memory
        head = inj.get("head")
        return cls(
            layer=_as_int(inj.layer, "injection.layer"),
            tweak=_as_float(inj.tweak, "injection.tweak"),
            site=str(inj.site),
            head=None if head is None else _as_int(head, "injection.head"),
            positions=str(inj.positions),
            memory_type=str(mem.type),
            encoding=str(mem.encoding),
            literal_hook=bool(inj.get("literal_hook", False)),
        )

    def canonical(self) -> "InjectionSpec":
        """The equivalent point that is actually computed.

        Adding τ·v to one head's result equals adding it to the summed attention output,
        whatever the head: every ``site=head`` point maps to its layer point, so a head
        axis costs nothing and is never evaluated twice.
        """
        if self.site == "head" and not self.literal_hook:
            return replace(self, site="layer", head=None)
        return self

    @property
    def hook_name(self) -> str:
        if self.site == "head" and self.literal_hook:
            return f"blocks.{self.layer}.attn.hook_result"
        return attn_out_hook(self.layer)

    def validate(self, model: LoadedModel | None = None) -> None:
        """Refuse impossible points with the config key to fix; bounds need the model."""
        from .memories import ENCODINGS, MEMORY_TYPES

        if self.site not in SITES:
            raise ConfigError(f"injection.site={self.site!r} is not one of {', '.join(SITES)}")
        if self.positions not in POSITIONS:
            raise ConfigError(f"injection.positions={self.positions!r} is not one of {', '.join(POSITIONS)}")
        if not math.isfinite(self.tweak) or self.tweak < 0:
            raise ConfigError(f"injection.tweak={self.tweak} must be a finite number >= 0")
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"memory.encoding={self.encoding!r} is not one of {', '.join(ENCODINGS)}")
        if self.memory_type not in MEMORY_TYPES:
            raise ConfigError(f"memory.type={self.memory_type!r} is not one of {', '.join(MEMORY_TYPES)}")
        if self.site == "head" and self.head is None:
            raise ConfigError("injection.site=head needs injection.head (any head: they are equivalent)")
        if model is None:
            return
        if not 0 <= self.layer < model.n_layers:
            raise ConfigError(f"injection.layer={self.layer} is out of range for {model.name} (layers 0..{model.n_layers - 1})")
        if self.site == "head" and not 0 <= int(self.head) < model.n_heads:
            raise ConfigError(f"injection.head={self.head} is out of range for {model.name} (heads 0..{model.n_heads - 1})")


def _as_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) and not (isinstance(value, str) and value.lstrip("-").isdigit()):
        raise ConfigError(f"{key}={value!r} must be an integer")
    return int(value)


def _as_float(value: Any, key: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}={value!r} must be a number") from exc


@dataclass
class EvalResult:
    per_prompt: pd.DataFrame
    summary: dict[str, float]
    seconds: float = 0.0
    hooks: list[str] = field(default_factory=list)


def summarize(before: np.ndarray, after: np.ndarray, explicit: np.ndarray) -> dict[str, float]:
    gain = after - before
    with np.errstate(divide="ignore", invalid="ignore"):
        percent = np.where(before > 0, gain / before * 100.0, np.nan)
    return {
        "mean_gain": float(gain.mean()),
        "median_gain": float(np.median(gain)),
        "mean_percent_increase": float(np.nanmean(percent)) if np.isfinite(percent).any() else float("nan"),
        "frac_improved": float((gain > 0).mean()),
        "mean_prob_before": float(before.mean()),
        "mean_prob_after": float(after.mean()),
        "mean_prob_explicit": float(explicit.mean()),
        "n_prompts": float(len(gain)),
    }


def _rank(logits: Tensor, token: Tensor) -> Tensor:
    """0 = the answer is the top token."""
    answer_logit = logits.gather(1, token[:, None])
    return (logits > answer_logit).sum(dim=1)


class Evaluator:
    """Holds one (model, dataset): tokenization and the clean pass are done once."""

    def __init__(self, model: LoadedModel, dataset: Dataset, *, max_batch_tokens: int = 4096, padding_side: str = "right", top_k: int = 5):
        self.model = model
        self.dataset = dataset
        self.max_batch_tokens = int(max_batch_tokens)
        self.padding_side = padding_side
        self.top_k = int(top_k)
        frame = dataset.frame
        self.rows = [int(r) for r in frame["row"]]
        self.obscure_tokens = [model.tokenize(s, bos=True) for s in frame["obscure_sentence"]]
        self.explicit_tokens = [model.tokenize(s, bos=True) for s in frame["explicit_sentence"]]
        answer_tokens = []
        for answer, row in zip(frame["answer"], self.rows):
            ids = model.tokenize(answer, bos=False)
            if not ids:
                raise DataError(f"{dataset.source}: row {row}: answer {answer!r} tokenizes to nothing")
            answer_tokens.append(ids[0])
        self.answer_token = torch.as_tensor(answer_tokens, dtype=torch.long, device=model.device)
        for tokens, row in zip(self.obscure_tokens + self.explicit_tokens, self.rows + self.rows):
            if len(tokens) > model.n_ctx:
                raise DataError(f"{dataset.source}: row {row}: prompt has {len(tokens)} tokens, more than {model.name}'s context of {model.n_ctx}")
        self.obscure_batches = self._batches(self.obscure_tokens)
        self._clean: dict[str, np.ndarray] | None = None
        self._results: OrderedDict[tuple, EvalResult] = OrderedDict()
        self.max_cached_results = 256
        self.n_computed = 0  # distinct points actually run (equivalent points are served from _results)

    def _batches(self, token_lists: list[list[int]]) -> list[Batch]:
        return make_batches(token_lists, pad_id=self.model.pad_id, device=self.model.device, max_batch_tokens=self.max_batch_tokens, padding_side=self.padding_side)

    def _answer_probs(self, batches: list[Batch], hooks_for: Any = None) -> tuple[np.ndarray, np.ndarray, list[list[int]], np.ndarray]:
        n = len(self.rows)
        probs, ranks, logprobs = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n)
        top: list[list[int]] = [[] for _ in range(n)]
        for batch in batches:
            hooks = hooks_for(batch) if hooks_for else []
            logits = last_position_logits(self.model, batch, hooks)
            token = self.answer_token[batch.index.to(self.answer_token.device)]
            logp = torch.log_softmax(logits, dim=-1).gather(1, token[:, None])[:, 0]
            index = batch.index.cpu().numpy()
            probs[index] = logp.double().exp().cpu().numpy()
            logprobs[index] = logp.double().cpu().numpy()
            ranks[index] = _rank(logits, token).cpu().numpy()
            for row, ids in zip(index, logits.topk(self.top_k, dim=-1).indices.cpu().tolist()):
                top[row] = ids
        return probs, ranks, top, logprobs

    @property
    def clean(self) -> dict[str, np.ndarray]:
        """P(answer) before injection and with the explicit prompt, computed once."""
        if self._clean is None:
            before, rank_before, _, logprob_before = self._answer_probs(self.obscure_batches)
            explicit, _, _, _ = self._answer_probs(self._batches(self.explicit_tokens))
            self._clean = {"before": before, "rank_before": rank_before, "explicit": explicit, "logprob_before": logprob_before}
        return self._clean

    def memory_vectors(self, spec: InjectionSpec, memory_cfg: Any) -> tuple[list[str], Tensor]:
        texts = memory_texts(self.dataset.frame, memory_cfg)
        vectors = encode_memories(self.model, texts, self.rows, spec.encoding, spec.layer, max_batch_tokens=self.max_batch_tokens)
        return texts, vectors.to(self.model.device)

    def _hooks(self, spec: InjectionSpec, vectors: Tensor):
        def hooks_for(batch: Batch):
            memory = vectors[batch.index.to(vectors.device)]
            mask = position_mask(batch.attention_mask, batch.last_index, spec.positions)
            if spec.site == "head" and spec.literal_hook:
                def add_to_head(result: Tensor, hook) -> Tensor:  # noqa: ARG001 # (batch, pos, head, d_model)
                    result = result.clone()
                    result[:, :, spec.head, :] = inject(result[:, :, spec.head, :], memory, spec.tweak, mask)
                    return result
                return [(spec.hook_name, add_to_head)]

            def add_to_layer(attn_out: Tensor, hook) -> Tensor:  # noqa: ARG001 # (batch, pos, d_model)
                return inject(attn_out, memory.to(attn_out.dtype), spec.tweak, mask)
            return [(spec.hook_name, add_to_layer)]
        return hooks_for

    def evaluate(self, spec: InjectionSpec, memory_cfg: Any) -> EvalResult:
        """Evaluate one point; equivalent points (see :meth:`InjectionSpec.canonical`) share one computation."""
        spec.validate(self.model)
        key = (spec.canonical(), repr(memory_cfg))
        if key in self._results:
            self._results.move_to_end(key)
            return self._results[key]
        result = self._evaluate(spec.canonical(), memory_cfg)
        self.n_computed += 1
        self._results[key] = result
        while len(self._results) > self.max_cached_results:  # bounded: long sweeps must not grow
            self._results.popitem(last=False)
        return result

    def _evaluate(self, spec: InjectionSpec, memory_cfg: Any) -> EvalResult:
        started = time.perf_counter()
        clean = self.clean
        texts, vectors = self.memory_vectors(spec, memory_cfg)
        literal = spec.site == "head" and spec.literal_hook
        if literal:
            self.model.bridge.set_use_attn_result(True)
        try:
            after, rank_after, top, logprob_after = self._answer_probs(self.obscure_batches, self._hooks(spec, vectors))
        finally:
            if literal:
                self.model.bridge.set_use_attn_result(False)
        seconds = time.perf_counter() - started
        frame = self.dataset.frame
        gain = after - clean["before"]
        decode = self.model.decode
        per_prompt = pd.DataFrame(
            {
                "row": self.rows,
                "obscure_sentence": frame["obscure_sentence"].tolist(),
                "answer": frame["answer"].tolist(),
                "memory": texts,
                "answer_token": self.answer_token.cpu().numpy(),
                "answer_token_str": [decode(t) for t in self.answer_token.cpu().tolist()],
                "answer_prob_before": clean["before"],
                "answer_prob_after": after,
                "answer_prob_explicit": clean["explicit"],
                "gain": gain,
                "answer_logprob_before": clean["logprob_before"],
                "answer_logprob_after": logprob_after,
                "logprob_gain": logprob_after - clean["logprob_before"],
                "percent_increase": np.where(clean["before"] > 0, gain / np.maximum(clean["before"], 1e-300) * 100.0, np.nan),
                "rank_before": clean["rank_before"],
                "rank_after": rank_after,
                "top_k_after": ["|".join(decode(t) for t in ids) for ids in top],
            }
        )
        return EvalResult(per_prompt=per_prompt, summary=summarize(clean["before"], after, clean["explicit"]), seconds=seconds, hooks=[spec.hook_name])
