"""Evaluate one injection configuration over a dataset.

Per prompt: the first answer token, P(answer | obscure prompt) before and after the
injection, P(answer | explicit prompt), the answer's rank before/after and the top-k
tokens after. The objective is the mean answer-probability gain (after − before).

With ``specific`` (``metric.specific``) every point also runs with another prompt's memory
(``memory.type=shuffled``) at the same site, as one more copy in the same stacked forward; per
prompt, ``specific_gain`` = gain − gain with the shuffled memory (what the right memory adds
over injecting *an* entity).

The clean quantities (before, explicit) depend only on (model, weights, dataset), so an
:class:`Evaluator` computes them once (:mod:`._clean`) and every configuration reuses them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from torch import Tensor

from ..config._point import memory_key
from ..core._errors import ConfigError
from ..data._dataset import Dataset
from ._clean import CleanPass
from ._damage import DAMAGES, CleanRest
from ._injection import head_output_component
from ._memories import encode_memories, memory_rows, memory_texts, random_directions_like, with_type
from ._models import LoadedModel
from ._prefix import PrefixCache
from ._runner import Batch, last_position_logits, read_logits
from ._result import EvalResult, Monitor, chunk_values, empty_out, evaluation_result, read_answers
from ._stats import summarize  # noqa: F401 - re-exported
from ._spec import ANSWER_METRICS, POSITIONS, SITES, InjectionSpec, stacked_hooks  # noqa: F401 - the point of the search space; re-exported

if TYPE_CHECKING:
    from ..config._schema import RunConfig

__all__ = ["InjectionSpec", "EvalResult", "Evaluator", "Monitor", "summarize", "SITES", "POSITIONS"]

_CPU_FLOOR_TOKENS = 256  # see Evaluator.floor_tokens


class Evaluator(CleanPass):
    """Holds one (model, dataset): tokenization, the clean pass and its prefix cache are done once
    (:class:`CleanPass`); evaluates any point against them.

    ``prefix_cache_bytes`` bounds the residual-stream cache (see :mod:`meminject.prefix`);
    0 turns prefix reuse off (every trial runs the full forward: the plain path the tests
    compare against). ``trials_per_forward`` stacks that many same-layer trials in one pass.
    """

    def __init__(
        self,
        model: LoadedModel,
        dataset: Dataset,
        *,
        max_batch_tokens: int,
        padding_side: str,
        top_k: int,
        prefix_cache_bytes: int,
        trials_per_forward: int,
        max_padding: float,
        answer_metric: str,
        damage: str = "kl",  # metric.damage: kl | none (meminject.damage)
        chunks: int = 1,  # not a conf/ key: a pruned sweep asks for chunks (meminject.search._pruning)
        chunk_seed: int = 0,
        first_chunk: int = 0,  # successive halving: geometric chunks from this many prompts (×3)
    ):
        # No defaults here: they live in conf/ only (build from a config with from_config).
        self.model = model
        self.dataset = dataset
        self.max_batch_tokens = int(max_batch_tokens)
        self.padding_side = padding_side
        self.top_k = int(top_k)
        self.trials_per_forward = max(1, int(trials_per_forward))
        self.max_padding = float(max_padding)
        # A lone trial's chunk (~10 prompts of mixed lengths) bucketed by the padding rule runs in
        # 2-3 forwards of a few dozen tokens; below ~256 tokens a CPU forward costs about as much
        # as one of 256, so such chunks are cut by that cost instead (8 chunks of the handwritten
        # train part: 3.76 → 3.29 s over L5/L15/L25, unchunked 1.99 s). Stacked trials and whole
        # passes fill their forwards already and keep the padding rule.
        self.floor_tokens = (
            _CPU_FLOOR_TOKENS if chunks > 1 and self.trials_per_forward == 1 and model.device.type == "cpu" else 0
        )
        self.rows = [int(r) for r in dataset.frame["row"]]
        self.row_ids = np.asarray(self.rows)
        if answer_metric not in ANSWER_METRICS:
            raise ConfigError(f"metric.answer={answer_metric!r} is not one of {', '.join(ANSWER_METRICS)}")
        self.answer_metric = answer_metric
        if damage not in DAMAGES:
            raise ConfigError(f"metric.damage={damage!r} is not one of {', '.join(DAMAGES)}")
        self.damage = damage
        self._tokenize_prompts(model, dataset)
        self._batch_chunks(chunks, chunk_seed, first_chunk)
        self.prefix = (
            PrefixCache(model, self.obscure_batches, max_bytes=int(prefix_cache_bytes))
            if prefix_cache_bytes and int(prefix_cache_bytes) > 0
            else None
        )
        self._clean: dict[str, np.ndarray] | None = None
        self._clean_rest: CleanRest | None = None  # the clean side of the damage, from the clean pass
        self.progress: Callable[[str, int, int], None] | None = None  # (stage, batches done, batches) after each batch
        self._results: OrderedDict[tuple, EvalResult] = OrderedDict()
        self._vectors: OrderedDict[tuple, tuple[list[str], Tensor]] = OrderedDict()
        self.max_cached_results = 256
        self.n_computed = 0  # distinct points actually run (equivalent points are served from _results)
        # layer -> the residual norm a relative scale rescales v to, instead of this dataset's own
        # (meminject apply: an exported injection keeps the norm it was found with)
        self.fixed_norms: dict[int, float] = {}

    @classmethod
    def from_config(
        cls,
        model: LoadedModel,
        dataset: Dataset,
        run: RunConfig,
        chunks: int = 1,
        stack_chunks: bool = False,
        first_chunk: int = 0,
    ) -> "Evaluator":
        """Build from the run's ``perf`` and ``metric`` settings and ``top_k`` (``chunks``: see __init__).

        ``perf.trials_per_forward=auto`` stacks 8 trials on CUDA, and on a CPU too when
        ``stack_chunks`` (a pruned grid, whose asked points share a layer): one chunk of ~10
        prompts runs in small batches, 1.6-2.2× its share of a single pass, while 8 stacked run at
        0.9× (benchmarks/trial_variants.py). Full-size CPU batches gain nothing from stacking.
        """
        perf = run.perf
        per_forward = perf.trials_per_forward
        if per_forward == "auto":
            per_forward = 8 if model.device.type == "cuda" or (stack_chunks and chunks > 1) else 1
        return cls(
            model,
            dataset,
            max_batch_tokens=perf.max_batch_tokens,
            padding_side=perf.padding_side,
            top_k=run.top_k,
            prefix_cache_bytes=int(perf.prefix_cache_mb * 2**20),
            trials_per_forward=int(per_forward),
            max_padding=perf.max_padding,
            answer_metric=run.metric.answer,
            damage=run.metric.damage,
            chunks=chunks,
            chunk_seed=run.seed,
            first_chunk=first_chunk,
        )

    def encoded_memories(self, spec: InjectionSpec, memory_cfg: Any) -> tuple[list[str], Tensor]:
        """Memory texts and their encodings; cached per (texts, encoding, layer for ``layer``)."""
        texts = memory_texts(self.dataset.frame, memory_cfg)
        key = (tuple(texts), spec.encoding, spec.layer if spec.encoding == "layer" else None)
        if key in self._vectors:
            self._vectors.move_to_end(key)
            return self._vectors[key]
        vectors = encode_memories(
            self.model, texts, self.rows, spec.encoding, spec.layer, max_batch_tokens=self.max_batch_tokens
        )
        self._vectors[key] = (texts, vectors.to(self.model.device))
        while len(self._vectors) > 64:
            self._vectors.popitem(last=False)
        return self._vectors[key]

    def memory_vectors(self, spec: InjectionSpec, memory_cfg: Any) -> tuple[list[str], Tensor]:
        """The vectors v that the injection adds as τ·v, one per prompt.

        Encoded memory, then: ``pos_matched``/``random_matched`` controls take the correct
        memory's norm for the same prompt; ``random_vector`` swaps it for a random direction of the same
        norm; ``head_subspace`` keeps the part head h can write; ``relative`` rescales it to
        the layer's typical residual-stream norm.
        """
        texts, vectors = self.encoded_memories(spec, memory_cfg)
        if spec.memory_type.endswith("_matched"):
            # the control at the correct memory's strength: only the content differs
            correct_cfg = replace(memory_cfg, type="correct")
            _, correct = self.encoded_memories(replace(spec, memory_type="correct"), correct_cfg)
            vectors = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12) * correct.norm(dim=-1, keepdim=True)
        if spec.memory_type == "random_vector":
            vectors = random_directions_like(vectors, self.rows, memory_cfg)
            texts = [f"<random vector, norm of {text!r}>" for text in texts]
        if spec.site == "head_subspace":
            vectors = head_output_component(vectors, self.model.bridge.W_O[spec.layer, spec.head])
        if spec.scale == "relative":
            target = float(self.fixed_norms.get(spec.layer, self.residual_norms[spec.layer]))
            vectors = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12) * target
        return texts, vectors

    def evaluate(self, spec: InjectionSpec, memory_cfg: Any, *, specific: bool = False) -> EvalResult:
        """Evaluate one point; equivalent points (see :meth:`InjectionSpec.canonical`) share one computation."""
        return self.evaluate_many([(spec, memory_cfg)], specific=specific)[0]

    def evaluate_many(
        self,
        points: list[tuple[InjectionSpec, Any]],
        monitors: list[Monitor | None] | None = None,
        *,
        specific: bool = False,
    ) -> list[EvalResult]:
        """Evaluate several points; those at one layer share suffix passes (``trials_per_forward``).

        ``monitors[i]`` watches point i chunk by chunk and may stop it (see :data:`Monitor`);
        a stopped point's partial result is returned and never cached. ``specific``: each point
        also runs with the shuffled memory, in the same forward (its result gains the
        ``specific_gain`` columns; see the module docstring).
        """
        for spec, _ in points:
            spec.validate(self.model)
        monitors = list(monitors) if monitors is not None else [None] * len(points)
        keys = [(spec.canonical(), memory_key(memory_cfg), bool(specific)) for spec, memory_cfg in points]
        todo: dict[tuple, tuple[InjectionSpec, Any, Monitor | None]] = {}
        for key, (spec, memory_cfg), monitor in zip(keys, points, monitors):
            if key in self._results:
                self._results.move_to_end(key)
            else:
                todo.setdefault(key, (spec.canonical(), memory_cfg, monitor))
        fresh: dict[tuple, EvalResult] = {}
        groups: dict[tuple, list[tuple]] = {}
        for key, (spec, _, _) in todo.items():
            literal = spec.site == "head" and spec.literal_hook  # only the literal per-head hook needs its own pass
            groups.setdefault(
                (spec.layer, literal, spec.head if literal else None, spec.positions == "last"), []
            ).append(key)
        for group in groups.values():
            for start in range(0, len(group), self.trials_per_forward):
                chunk = group[start : start + self.trials_per_forward]
                for key, result in zip(chunk, self._evaluate_group([todo[k] for k in chunk], specific)):
                    fresh[key] = result
        self.n_computed += len(fresh)
        for key, result in fresh.items():
            if not result.pruned:
                self._results[key] = result
        results = [fresh.get(key) or self._results[key] for key in keys]
        while len(self._results) > self.max_cached_results:  # bounded: long sweeps must not grow
            self._results.popitem(last=False)
        return results

    def _chunk_values(self, out: dict[str, Any], index: np.ndarray) -> dict[str, np.ndarray]:
        """Per-prompt values of the prompts at ``index`` (what a monitor judges)."""
        return chunk_values(out, self.clean, index)

    def shuffled_memory(self, spec: InjectionSpec, memory_cfg: Any) -> tuple[list[str], Tensor]:
        """The shuffled memory at ``spec``'s site: another prompt's correct memory, encoded,
        scaled and projected as ``spec``'s own memory would be."""
        return self.memory_vectors(replace(spec, memory_type="shuffled"), with_type(memory_cfg, "shuffled"))

    def _evaluate_group(
        self, points: list[tuple[InjectionSpec, Any, Monitor | None]], specific: bool = False
    ) -> list[EvalResult]:
        """Points at one layer (and site), evaluated together in stacked passes, chunk by chunk:
        after each chunk every monitor sees its point's values, and a stopped point leaves the stack.
        ``specific``: each point's shuffled-memory copy runs beside it in the same stack."""
        started = time.perf_counter()
        clean = self.clean
        specs = [spec for spec, _, _ in points]
        monitors = [monitor for _, _, monitor in points]
        memories = [self.memory_vectors(spec, memory_cfg) for spec, memory_cfg, _ in points]
        vectors = [v for _, v in memories]
        shuffled = [self.shuffled_memory(spec, memory_cfg) for spec, memory_cfg, _ in points] if specific else None
        first = specs[0]
        literal = first.site == "head" and first.literal_hook
        start, last_token_only = self._suffix_start(specs)
        outs = [empty_out(len(self.rows)) for _ in specs]
        for out, (_, memory_cfg, _) in zip(outs, points):  # whose memory each prompt receives
            out["memory_rows"] = memory_rows(self.dataset.frame, memory_cfg)
        if shuffled is not None:  # the shuffled copy's arrays ride inside its point's
            for out, (texts, vectors_shuffled), (_, memory_cfg, _) in zip(outs, shuffled, points):
                rows = memory_rows(self.dataset.frame, with_type(memory_cfg, "shuffled"))
                out["shuffled"] = {
                    **empty_out(len(self.rows)),
                    "texts": texts,
                    "vectors": vectors_shuffled,
                    "rows": rows,
                }
        # the last-token pass holds every prompt's last token: one chunk
        chunks = (
            [(np.arange(len(self.rows)), range(1))]
            if last_token_only
            else list(zip(self.chunk_index, self.chunk_batches))
        )
        if literal:
            self.model.bridge.set_use_attn_result(True)
        try:
            seen = self._run_chunks(chunks, start, last_token_only, specs, vectors, monitors, outs)
        finally:
            if literal:
                self.model.bridge.set_use_attn_result(False)
        seconds = (time.perf_counter() - started) / len(specs)
        return [
            evaluation_result(
                self,
                spec,
                texts,
                out,
                clean,
                seconds,
                np.sort(np.concatenate([index for index, _ in chunks[:n]])) if n < len(chunks) else None,
            )
            for spec, (texts, _), out, n in zip(specs, memories, outs, seen)
        ]

    def _suffix_start(self, specs: list[InjectionSpec]) -> tuple[int | None, bool]:
        """Where the points' passes start: the prefix cache's layer for their layer (None: full
        forwards), and whether only the last token runs (first-token reads, injection at the
        last position, the prompts' keys and values cached)."""
        start = self.prefix.start_layer(specs[0].layer) if self.prefix is not None else None
        last_token_only = (
            start is not None
            and self.answer_metric == "first_token"
            and all(spec.positions == "last" for spec in specs)
            and self.prefix.ensure_kv(
                lambda position: last_position_logits(self.model, self.obscure_batches[position], [])
            )
        )
        return start, last_token_only

    def _run_chunks(
        self,
        chunks: list[tuple[np.ndarray, range]],
        start: int | None,
        last_token_only: bool,
        specs: list[InjectionSpec],
        vectors: list[Tensor],
        monitors: list[Monitor | None],
        outs: list[dict[str, Any]],
    ) -> list[int]:
        """Run the stacked points chunk by chunk into ``outs``; after each chunk every monitor
        judges its point, and a stopped point leaves the stack. Returns the chunks each point ran."""
        active = list(range(len(specs)))
        seen = [0] * len(specs)  # chunks each point has run
        for index, positions in chunks:
            # the stack's lanes: each active point, and its shuffled copy beside it (specific)
            lanes = [(specs[k], vectors[k], outs[k]) for k in active]
            lanes += [
                (specs[k], outs[k]["shuffled"]["vectors"], outs[k]["shuffled"]) for k in active if "shuffled" in outs[k]
            ]
            for position in positions:
                batch = self.prefix.last_batch if last_token_only else self.obscure_batches[position]
                self._run_batch(
                    batch,
                    position,
                    start,
                    last_token_only,
                    [lane[0] for lane in lanes],
                    [lane[1] for lane in lanes],
                    [lane[2] for lane in lanes],
                )
                if self.progress is not None:
                    self.progress("injected", position + 1, 1 if last_token_only else len(self.obscure_batches))
            for k in list(active):
                seen[k] += 1
                # after the last chunk the point is complete: nothing left to stop
                if (
                    seen[k] < len(chunks)
                    and monitors[k] is not None
                    and monitors[k](self.row_ids[index], self._chunk_values(outs[k], index))
                ):
                    active.remove(k)
            if not active:
                break
        return seen

    def _run_batch(
        self,
        batch: Batch,
        position: int,
        start: int | None,
        last_token_only: bool,
        specs: list[InjectionSpec],
        vectors: list[Tensor],
        outs: list[dict[str, Any]],
    ) -> None:
        """One batch for stacked same-layer points: through the prefix cache, or full forwards."""
        hooks = stacked_hooks(specs, vectors, batch, self.model.device, last_token_only)
        if start is not None:
            if last_token_only:  # every prompt's last token in one pass
                logits = self.prefix.last_token_logits(start, hooks, copies=len(specs))
            else:
                logits = self.prefix.last_logits(position, start, hooks, copies=len(specs))
            reads = batch.read_row.shape[0]
            for k, out in enumerate(outs):
                read_answers(batch, logits[k * reads : (k + 1) * reads], out, self.top_k, self._clean_rest)
        else:  # full forwards, one trial at a time
            for k, out in enumerate(outs):
                logits = read_logits(
                    self.model, batch, stacked_hooks([specs[k]], [vectors[k]], batch, self.model.device)
                )
                read_answers(batch, logits, out, self.top_k, self._clean_rest)
