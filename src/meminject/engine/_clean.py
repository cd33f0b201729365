"""The evaluator's fixed side: the prompts tokenized and batched, and the clean pass over them.

:class:`CleanPass` is the part of :class:`~meminject.engine._evaluation.Evaluator` that depends
only on (model, weights, dataset): the obscure and explicit prompts and their answers as
tokens, the obscure prompts in seeded chunks of length-bucketed batches, and the clean pass
that reads P(answer) before injection and with the explicit prompt, the typical residual norm
entering each layer (``scale=relative``) and the clean logits the damage compares against.
Each is computed once, and every evaluated point reuses it.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..core._errors import DataError
from ..data._dataset import Dataset
from ._models import LoadedModel
from ._damage import CleanRest
from ._prefix import PrefixCache
from ._result import empty_out, read_answers
from ._runner import Batch, make_batches, read_logits
from ._stats import typical_norm

log = logging.getLogger("meminject")

__all__ = ["CleanPass"]


class CleanPass:
    """Prompts as batches and the clean pass over them (a mixin: :class:`Evaluator` sets the
    settings below in its ``__init__``, then calls :meth:`_tokenize_prompts` and :meth:`_batch_chunks`)."""

    model: LoadedModel
    dataset: Dataset
    rows: list[int]
    max_batch_tokens: int
    padding_side: str
    max_padding: float
    floor_tokens: int
    top_k: int
    answer_metric: str
    damage: str
    prefix: PrefixCache | None
    progress: Callable[[str, int, int], None] | None
    _clean: dict[str, np.ndarray] | None
    _clean_rest: CleanRest | None

    def _tokenize_prompts(self, model: LoadedModel, dataset: Dataset) -> None:
        """Tokenize the obscure and explicit prompts and the answers; check them against the model."""
        frame = dataset.frame
        self.obscure_tokens = [model.tokenize(s, bos=True) for s in frame["obscure_sentence"]]
        self.explicit_tokens = [model.tokenize(s, bos=True) for s in frame["explicit_sentence"]]
        self.answer_ids: list[list[int]] = []
        for answer, row in zip(frame["answer"], self.rows):
            ids = model.tokenize(answer, bos=False)
            if not ids:
                raise DataError(f"{dataset.source}: row {row}: answer {answer!r} tokenizes to nothing")
            self.answer_ids.append(ids)
        self.answer_token = torch.as_tensor([ids[0] for ids in self.answer_ids], dtype=torch.long, device=model.device)
        for tokens, row in zip(self.obscure_tokens + self.explicit_tokens, self.rows + self.rows):
            if len(tokens) > model.n_ctx:
                raise DataError(
                    f"{dataset.source}: row {row}: prompt has {len(tokens)} tokens, more than {model.name}'s context of {model.n_ctx}"
                )

    def _batch_chunks(self, chunks: int, chunk_seed: int, first_chunk: int = 0, growth: int = 3) -> None:
        """Prompts in seeded chunks (one chunk unless pruning): each chunk is a random sample of the
        prompts, bucketed by length on its own, so a chunk still runs in full, well-packed batches.
        ``first_chunk`` > 0 (successive halving): the chunks end where ``first_chunk``, then
        ``growth`` times as many, ... prompts have been seen, in the same seeded order."""
        n = len(self.rows)
        order = np.random.default_rng([int(chunk_seed), 1]).permutation(n) if chunks > 1 else np.arange(n)
        if first_chunk > 0:
            ends = [int(first_chunk * growth**k) for k in range(64) if first_chunk * growth**k < n]
            parts = np.split(order, ends)
        else:
            parts = np.array_split(order, max(1, min(int(chunks), n)))
        self.chunk_index = [np.sort(part) for part in parts]
        self.obscure_batches: list[Batch] = []
        self.chunk_batches: list[range] = []  # positions in obscure_batches of each chunk
        for part in self.chunk_index:
            batches = self._scored_batches([self.obscure_tokens[i] for i in part], part)
            self.chunk_batches.append(range(len(self.obscure_batches), len(self.obscure_batches) + len(batches)))
            self.obscure_batches += batches

    @property
    def padded_fraction(self) -> float:
        """Share of padding tokens in the obscure batches (bucketing keeps it small)."""
        total = sum(int(b.tokens.numel()) for b in self.obscure_batches)
        real = sum(int(b.attention_mask.sum()) for b in self.obscure_batches)
        return 1.0 - real / max(total, 1)

    def _scored_batches(self, prompts: list[list[int]], index: np.ndarray | None = None) -> list[Batch]:
        """Batches of prompts with their read positions and targets.

        ``first_token``: the last prompt position, target the answer's first token (the paper).
        ``sequence``: the prompt is followed by the answer minus its last token (teacher forcing)
        and every answer token is read at the position before it.
        """
        index = np.arange(len(prompts)) if index is None else np.asarray(index)
        answers = [self.answer_ids[i] for i in index]
        if self.answer_metric == "first_token":
            sequences = prompts
            reads = [[(len(p) - 1, ids[0])] for p, ids in zip(prompts, answers)]
        else:
            sequences = [p + ids[:-1] for p, ids in zip(prompts, answers)]
            reads = [[(len(p) - 1 + j, t) for j, t in enumerate(ids)] for p, ids in zip(prompts, answers)]
        batches = self._batches(sequences, reads=reads, prompt_lengths=[len(p) for p in prompts])
        for batch in batches:  # batch rows -> positions among all prompts
            batch.index = torch.as_tensor(index, dtype=torch.long)[batch.index.cpu()].to(batch.index.device)
        return batches

    def _batches(self, token_lists: list[list[int]], **kwargs: Any) -> list[Batch]:
        return make_batches(
            token_lists,
            pad_id=self.model.pad_id,
            device=self.model.device,
            max_batch_tokens=self.max_batch_tokens,
            padding_side=self.padding_side,
            max_padding=self.max_padding,
            floor_tokens=self.floor_tokens,
            **kwargs,
        )

    def _norm_hooks(self, batch: Batch, norms: list[list[np.ndarray]]) -> list[tuple[torch.nn.Module, Any]]:
        """Pre-hooks collecting each block input's residual norms into ``norms[layer]``: real
        tokens only, and never a sequence's first token (BOS on real models carries massive
        activations: ~25,000 against ~165 at SmolLM2's layer 15)."""
        mask = batch.attention_mask.bool()  # (batch, pos)
        first = mask.int().argmax(dim=1)  # the first real position of each row (left or right padding)
        mask = mask.clone()
        mask[torch.arange(mask.shape[0], device=mask.device), first] = False
        hooks = []
        for layer, block in enumerate(self.model.bridge.blocks):

            def add(module, args, kwargs, layer=layer):  # noqa: ARG001 - torch pre-hook signature
                hidden = args[0] if args else kwargs.get("hidden_states")
                if isinstance(hidden, Tensor) and hidden.shape[:2] == mask.shape:
                    norms[layer].append(hidden.float().norm(dim=-1)[mask].cpu().numpy())

            hooks.append((block, add))
        return hooks

    def _answer_probs(
        self, batches: list[Batch], hooks_for: Any = None, capture: bool = False, stage: str = "clean"
    ) -> tuple[np.ndarray, np.ndarray, list[list[int]], np.ndarray]:
        out = empty_out(len(self.rows), keep_rest=capture and self.damage == "kl")
        norms: list[list[np.ndarray]] = [[] for _ in range(self.model.n_layers)]
        for position, batch in enumerate(batches):
            hooks = hooks_for(batch) if hooks_for else []
            handles = []
            if capture:
                module_hooks = self._norm_hooks(batch, norms)
                if self.prefix is not None and self.prefix.layers:
                    module_hooks += self.prefix.capture_hooks(position)
                handles = [module.register_forward_pre_hook(fn, with_kwargs=True) for module, fn in module_hooks]
            try:
                logits = read_logits(self.model, batch, hooks)
            finally:
                for handle in handles:
                    handle.remove()
            read_answers(batch, logits, out, self.top_k)
            if self.progress is not None:
                self.progress(stage, position + 1, len(batches))
        if capture:
            self._residual_norms = np.array(
                [typical_norm(np.concatenate(layer_norms)) if layer_norms else np.nan for layer_norms in norms]
            )
            if out.get("rest"):  # the clean side of every trial's damage (meminject.damage)
                self._clean_rest = CleanRest(out["rest"], len(self.rows))
        return out["probs"], out["ranks"], out["top"], out["logprobs"]

    @property
    def clean(self) -> dict[str, np.ndarray]:
        """P(answer) before injection and with the explicit prompt, computed once.

        The obscure pass also fills the prefix cache (residuals entering the cached layers).
        """
        if self._clean is None:
            from ..core._progress import stage

            stage(f"clean pass: {len(self.dataset)} prompts before any injection, then their explicit versions …")
            before, rank_before, _, logprob_before = self._answer_probs(self.obscure_batches, capture=True)
            explicit, _, _, logprob_explicit = self._answer_probs(
                self._scored_batches(self.explicit_tokens), stage="explicit"
            )
            self._clean = {
                "before": before,
                "rank_before": rank_before,
                "explicit": explicit,
                "logprob_before": logprob_before,
                "logprob_explicit": logprob_explicit,
            }
            if self.prefix is not None:
                log.debug(self.prefix.describe())
        return self._clean

    @property
    def residual_norms(self) -> np.ndarray:
        """The typical L2 norm of the residual stream entering each layer (clean pass, real
        tokens but each prompt's first; see :func:`typical_norm`)."""
        self.clean
        return self._residual_norms
