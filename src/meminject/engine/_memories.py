"""Memories: which text is injected for each prompt, and how it becomes a vector.

Types (``memory.type``): ``correct`` is the row's explicit entity (the missing hop). The
controls: ``pos``, a random word of one part of speech per prompt; ``random``, random
common words; ``random_vector``, a random direction with the norm of the correct
memory's vector (same strength, no meaning); ``shuffled``, another prompt's correct memory
(a seeded derangement, :func:`shuffled_sources`: it carries an entity, only not this prompt's). Word pools come from
PyPI lexical data by default (``memory.words=lexicon``: wordfreq ranks, lemminflect parts
of speech, see :mod:`meminject.lexicon`), or from the paper's word list
(``memory.words=paper``: ``top_word_types.csv``, top 5,000 words and their parts of
speech, read locally, from the cache, or downloaded once; ``memory.word_list=PATH`` for
any CSV with its columns). Every draw is seeded by
(``memory.seed``, ``memory.draw``, prompt row): the same config gives the same memories.

Encodings (``memory.encoding``), see :mod:`meminject.injection` for the formulas:
``unembed`` and ``embed`` read the (possibly processed) weight matrices; ``layer`` runs
the memory text (with BOS, as in the paper) and takes the attention output of its last
token at the injection layer.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..core._errors import ConfigError, DataError, first_line
from ..config._point import attn_out_hook, site_pos  # noqa: F401 - site_pos re-exported
from ..config._choices import (
    ENCODINGS,
    MEMORY_TYPES,
    POS_CHOICES,
    POS_COLUMNS,
    WORD_CONTROLS,
    WORD_SOURCES,
    relevant_keys,
)  # noqa: F401 - re-exported
from ._injection import embed_memory, unembed_memory
from ._models import LoadedModel
from ._runner import capture_last_position, make_batches

__all__ = [
    "MEMORY_TYPES",
    "POS_CHOICES",
    "relevant_keys",
    "site_pos",
    "ENCODINGS",
    "memory_texts",
    "word_pools",
    "word_source",
    "encode_memories",
    "attn_out_hook",
    "shuffled_sources",
    "memory_rows",
    "with_type",
]

TOP_COLUMN = "Top 5000 Words"
_POOLS: dict[str, dict[str, list[str]]] = {}


def word_pools(memory_cfg: Any) -> dict[str, list[str]]:
    """Word pools by part of speech (and ``top``, most frequent first): from the lexicon, or
    from a word-list CSV (``memory.word_list=PATH``, or ``memory.words=paper``)."""
    source = str(memory_cfg.words)
    if source not in WORD_SOURCES:
        raise ConfigError(
            f"memory.words={source!r}: use lexicon (wordfreq + lemminflect) or paper (the paper's word list)"
        )
    if source == "lexicon" and memory_cfg.word_list is None:
        from ..data._lexicon import lexicon_pools

        top_n = int(memory_cfg.lexicon_top)
        if top_n < 100:
            raise ConfigError(f"memory.lexicon_top={top_n}: use at least 100 words")
        return lexicon_pools(top_n)
    return _word_list_pools(memory_cfg)


def word_source(memory_cfg: Any) -> str:
    """Where a control's words come from (recorded with results); ``-`` for non-word memories."""
    if str(memory_cfg.type) not in WORD_CONTROLS:
        return "-"
    if memory_cfg.word_list is not None:
        return f"word_list {memory_cfg.word_list}"
    if str(memory_cfg.words) == "paper":
        return "paper top_word_types.csv"
    from ..data._lexicon import lexicon_versions

    versions = " + ".join(f"{name} {v}" for name, v in lexicon_versions().items())
    return f"lexicon {versions} (top {int(memory_cfg.lexicon_top)})"


def _word_list_pools(memory_cfg: Any) -> dict[str, list[str]]:
    """Pools from the paper's word-list CSV (columns Top 5000 Words, Nouns, Verbs, ...)."""
    import pandas as pd

    from ..data._dataset import FileRef, resolve_data_file

    node = FileRef(
        path=memory_cfg.word_list,
        source="file",
        file="top_word_types.csv",
        dir=None,
        url=memory_cfg.word_list_url,
        sha256=memory_cfg.word_list_sha256,
    )
    try:
        path, _ = resolve_data_file(node)
    except DataError as exc:
        raise DataError(f"word list for memory.type={memory_cfg.type}: {exc} (or memory.word_list=FILE)") from exc
    key = str(path)
    if key not in _POOLS:
        try:
            frame = pd.read_csv(path, dtype=str, encoding="utf-8-sig")
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"memory.word_list={path}: not a readable CSV ({first_line(exc)})") from exc
        needed = [TOP_COLUMN, *POS_COLUMNS.values()]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise DataError(
                f"memory.word_list={path}: missing column(s) {', '.join(missing)} (expected {', '.join(needed)})"
            )
        pools = {"top": [w.strip() for w in frame[TOP_COLUMN].dropna() if w.strip()]}
        for pos, column in POS_COLUMNS.items():
            pools[pos] = list(dict.fromkeys(w.strip() for w in frame[column].dropna() if w.strip()))
        empty = [name for name, words in pools.items() if not words]
        if empty:
            raise DataError(f"memory.word_list={path}: no words for {', '.join(empty)}")
        _POOLS[key] = pools
    return _POOLS[key]


def draw_rng(memory_cfg: Any, row: int, salt: int = 0) -> np.random.Generator:
    """The generator of one prompt's control draw: seeded by (seed, draw, row, salt)."""
    return np.random.default_rng([int(memory_cfg.seed), int(memory_cfg.draw), int(row), int(salt)])


def shuffled_sources(entities: Sequence[str], memory_cfg: Any) -> list[int]:
    """``memory.type=shuffled``: for each prompt (by position), the position of the prompt whose
    memory it receives. A seeded derangement in which no prompt receives its own memory, nor one
    with the same text (two prompts about one entity do not swap it).

    Prompts are grouped by memory text, the groups and their members put in a seeded random
    order, and each prompt takes the memory ``m`` places on in that order (``m``: the largest
    group). A group is contiguous and no longer than ``m``, so ``m`` places on (cyclically, with
    ``n - m >= m``) is always another group. With every text distinct it is a uniformly random
    cyclic permutation. Seeded by (``memory.seed``, ``memory.draw``): the same prompts and seed
    give the same assignment.
    """
    texts = [str(t) for t in entities]
    n = len(texts)
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(text, []).append(i)
    largest = max((len(g) for g in groups.values()), default=0)
    if n < 2 or 2 * largest > n:
        common = max(groups, key=lambda t: len(groups[t])) if groups else ""
        raise DataError(
            f"memory.type=shuffled needs prompts whose memories differ: {largest} of {n} prompts have the memory {common!r}, "
            "so some prompt would receive its own; use more prompts (data.limit) or another memory type"
        )
    rng = draw_rng(memory_cfg, n, 4)
    order_groups = list(groups.values())
    rng.shuffle(order_groups)
    order = [i for group in order_groups for i in rng.permutation(group).tolist()]
    sources = [0] * n
    for k, i in enumerate(order):
        sources[i] = order[(k + largest) % n]
    return sources


def with_type(memory_cfg: Any, kind: str) -> Any:
    """``memory_cfg`` with another memory type: a typed :class:`~meminject.config.MemoryConfig`,
    or any mapping-like config (an OmegaConf node in a notebook or a test)."""
    import dataclasses

    if dataclasses.is_dataclass(memory_cfg):
        return dataclasses.replace(memory_cfg, type=kind)
    from omegaconf import OmegaConf

    copy = OmegaConf.create(OmegaConf.to_container(memory_cfg) if OmegaConf.is_config(memory_cfg) else dict(memory_cfg))
    copy.type = kind
    return copy


def memory_rows(frame: Any, memory_cfg: Any) -> list[int]:
    """The dataset row whose memory each prompt receives: its own for the correct memory (and
    ``random_vector``, drawn at its norm), another's for ``shuffled``, -1 for the word controls."""
    rows = [int(r) for r in frame["row"]]
    kind = str(memory_cfg.type)
    if kind == "shuffled":
        return [rows[j] for j in shuffled_sources(frame["explicit_entity"].tolist(), memory_cfg)]
    if kind in ("correct", "random_vector"):
        return rows
    return [-1] * len(rows)


def memory_texts(frame: Any, memory_cfg: Any) -> list[str]:
    """The memory text of every prompt, for the configured memory type.

    ``random_vector`` keeps the correct memory's text: its vector is drawn from that one's norm.
    ``shuffled`` takes another prompt's (:func:`shuffled_sources`).
    """
    kind = WORD_CONTROLS.get(str(memory_cfg.type), str(memory_cfg.type))
    if kind in ("correct", "random_vector"):
        return [str(text) for text in frame["explicit_entity"]]
    if kind == "shuffled":
        entities = [str(text) for text in frame["explicit_entity"]]
        return [entities[j] for j in shuffled_sources(entities, memory_cfg)]
    word_index = memory_cfg.word_index
    if kind == "pos":
        pos = str(memory_cfg.pos)
        if pos not in POS_CHOICES:
            raise ConfigError(f"memory.pos={pos!r} is not one of {', '.join(POS_CHOICES)}")
        pool = word_pools(memory_cfg)[pos]
        if word_index is not None:  # the paper's protocol: the k-th word of the list, in every prompt
            k = int(word_index)
            if not 0 <= k < len(pool):
                raise ConfigError(
                    f"memory.word_index={k} is out of range for the {pos} list of memory.words={memory_cfg.words} (0..{len(pool) - 1})"
                )
            return [pool[k]] * len(frame["row"])
        return [pool[draw_rng(memory_cfg, row, 1).integers(len(pool))] for row in frame["row"]]
    if word_index is not None:
        raise ConfigError(
            f"memory.word_index={word_index} applies to memory.type=pos/pos_matched (memory.pos=top is the paper's top-5000 list); set memory.word_index=null"
        )
    if kind == "random":
        n_words, top = int(memory_cfg.n_words), int(memory_cfg.top_words)
        if n_words < 1 or top < 1:
            raise ConfigError(f"memory.n_words={n_words} and memory.top_words={top} must be >= 1")
        pool = word_pools(memory_cfg)["top"][:top]
        return [
            " ".join(pool[i] for i in draw_rng(memory_cfg, row, 2).integers(len(pool), size=n_words))
            for row in frame["row"]
        ]
    raise ConfigError(f"memory.type={kind!r} is not one of {', '.join(MEMORY_TYPES)}")


def random_directions_like(vectors: Tensor, rows: Sequence[int], memory_cfg: Any) -> Tensor:
    """``random_vector``: per prompt, a seeded random direction scaled to that prompt's vector norm."""
    out = torch.empty_like(vectors)
    for i, row in enumerate(rows):
        direction = torch.as_tensor(
            draw_rng(memory_cfg, row, 3).standard_normal(vectors.shape[1]), dtype=vectors.dtype, device=vectors.device
        )
        out[i] = direction / direction.norm() * vectors[i].norm()
    return out


def memory_tokens(model: LoadedModel, texts: Sequence[str], rows: Sequence[int], *, bos: bool) -> list[list[int]]:
    """Tokenize memories; a memory with no tokens cannot be injected and is refused."""
    token_lists = []
    for text, row in zip(texts, rows):
        ids = model.tokenize(text, bos=bos)
        if not model.tokenize(text, bos=False):
            raise DataError(f"row {row}: memory {text!r} tokenizes to nothing")
        token_lists.append(ids)
    return token_lists


def encode_memories(
    model: LoadedModel,
    texts: Sequence[str],
    rows: Sequence[int],
    encoding: str,
    layer: int,
    *,
    max_batch_tokens: int = 4096,  # callers with a config pass perf.max_batch_tokens
) -> Float[Tensor, "n d_model"]:
    """One vector per memory text, in the residual space of ``model``."""
    if encoding in ("unembed", "embed"):
        token_lists = memory_tokens(model, texts, rows, bos=False)
        if encoding == "unembed":
            W_U = model.W_U
            vectors = [unembed_memory(ids, W_U) for ids in token_lists]
        else:
            W_E = model.W_E
            vectors = [embed_memory(ids, W_E) for ids in token_lists]
        return torch.stack(vectors).float()
    if encoding == "layer":
        token_lists = memory_tokens(model, texts, rows, bos=True)
        for ids, row in zip(token_lists, rows):
            if len(ids) > model.n_ctx:  # the memory runs through the model: it must fit its context
                raise DataError(
                    f"row {row}: the memory text has {len(ids)} tokens, more than {model.name}'s context of {model.n_ctx} (memory.encoding=layer runs it through the model); shorten it or use encoding=unembed/embed"
                )
        out = torch.zeros(len(texts), model.d_model, device=model.device)
        for batch in make_batches(
            token_lists, pad_id=model.pad_id, device=model.device, max_batch_tokens=max_batch_tokens
        ):
            out[batch.index.to(model.device)] = capture_last_position(
                model, batch, attn_out_hook(layer), stop_at_layer=layer + 1
            )
        return out
    raise ConfigError(f"memory.encoding={encoding!r} is not one of {', '.join(ENCODINGS)}")
