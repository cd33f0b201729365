"""Word pools for the control memories, built from lexical data that installs from PyPI.

Frequency ranks come from ``wordfreq`` (Speer et al.: a blend of Wikipedia, subtitles,
news, books, web and social text; its data ships inside the wheel, so it works offline).
Parts of speech come from ``lemminflect``'s lemma dictionary (derived from the NIH
SPECIALIST Lexicon; also inside the wheel). A common word joins the pool of an open class
(noun, verb, adjective, adverb) only when that class is its *only* reading in the lexicon
and it is its own lemma there ("table", which is also a verb, and "united", an inflection
of "unite", are left out), so a ``pos`` control memory is an unambiguous word of that
class. Closed classes are not in the lemma dictionary (or wrongly so: it lists pronouns as
nouns), so the few hundred function words are listed here; conjunctions, a closed class,
are that short list.

The paper's own word list (``top_word_types.csv``) stays available: ``memory.words=paper``
or ``memory.word_list=PATH``.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["lexicon_pools", "CONJUNCTIONS", "CLOSED_CLASS", "LEXICON_POS", "lexicon_versions"]

# Coordinating and common subordinating conjunctions, most frequent first.
CONJUNCTIONS: tuple[str, ...] = (
    "and",
    "but",
    "or",
    "because",
    "if",
    "so",
    "while",
    "although",
    "though",
    "unless",
    "whereas",
    "whether",
    "nor",
    "yet",
    "until",
    "since",
    "once",
    "than",
)

# Function words (pronouns, determiners, prepositions, auxiliaries and modals, particles,
# wh-words, number words): never an open-class pool member, whatever the lemma dictionary says.
CLOSED_CLASS: frozenset[str] = frozenset(
    """
    i me my mine myself you your yours yourself yourselves he him his himself she her hers herself
    it its itself we us our ours ourselves they them their theirs themselves one ones oneself
    this that these those who whom whose which what whatever whoever whichever where when why how
    there here a an the some any no none all both each every either neither few many much more most
    less least several such own other another same lot lots enough
    about above across after against along amid among around as at before behind below beneath
    beside besides between beyond by despite down during except for from in inside into like near
    of off on onto out outside over past per since through throughout till to toward towards under
    underneath unlike until up upon via with within without
    be am is are was were been being have has had having do does did doing done
    will would shall should can could may might must ought need dare
    not never yes yeah ok okay oh hey please thanks thank hello hi
    just only also too very quite rather almost even still yet already again ever else
    then now so thus hence therefore however otherwise instead
    zero two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty
    hundred thousand million billion first second third
    """.split()
) | frozenset(CONJUNCTIONS)

# Our part-of-speech names -> the lemma dictionary's universal POS tags.
LEXICON_POS: dict[str, str] = {"noun": "NOUN", "verb": "VERB", "adjective": "ADJ", "adverb": "ADV"}


def lexicon_versions() -> dict[str, str]:
    """Versions of the lexical packages, recorded with results that use their pools."""
    from importlib.metadata import version

    return {"wordfreq": version("wordfreq"), "lemminflect": version("lemminflect")}


@lru_cache(maxsize=4)
def lexicon_pools(top_n: int = 5000) -> dict[str, list[str]]:
    """Pools ``top`` (the ``top_n`` most frequent alphabetic English words, most frequent
    first) and one per part of speech (members of ``top``, same order)."""
    import wordfreq
    from lemminflect import getAllLemmas

    top = list(dict.fromkeys(w for w in wordfreq.top_n_list("en", top_n) if w.isascii() and w.isalpha()))
    pools: dict[str, list[str]] = {"top": top, **{pos: [] for pos in LEXICON_POS}, "conjunction": list(CONJUNCTIONS)}
    open_tags = set(LEXICON_POS.values())
    for word in top:
        if word in CLOSED_CLASS or len(word) < 2:
            continue
        readings = {tag: lemmas for tag, lemmas in getAllLemmas(word).items() if tag in open_tags}
        if len(readings) != 1:
            continue  # unknown to the lexicon, or ambiguous between open classes
        ((tag, lemmas),) = readings.items()
        if word in lemmas:
            pools[next(pos for pos, t in LEXICON_POS.items() if t == tag)].append(word)
    return pools
