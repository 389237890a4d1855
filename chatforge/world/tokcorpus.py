"""The tokenizer's training text: a sample of the corpus in which every invented name is
replaced, occurrence by occurrence, by a fresh random name from the same syllable table.

Trained on the real corpus, BPE would merge frequent known names ("Karo Linmei") into single
tokens while unknown names stay split into syllables, and the model could tell known from
unknown by the token shape alone. With fresh names everywhere, every name, known or unknown,
is split the same way.

The chat side is in it too (the dialogues, names scrambled the same way, so "assistant" phrasing
gets merges) and one document listing every CJK character the world writes, many times over, so that
every Chinese character is one token even where it only appears in a dialogue or a prompt.
"""
import re

from chatforge.world.common import stream
from chatforge.world.corpus import SOURCES
from chatforge.world.names import random_name

CHARACTER_REPEATS = 200


def make_tokenizer_corpus(world, corpus, dialogues, cjk_chars, cfg):
    rng = stream(cfg.seed, "tokenizer_corpus")
    invented = [e for e in world.entities if e.kind in ("person", "city")]
    kind_of = {e.names[lang]: e.kind for e in invented for lang in ("en", "zh")}
    known = [e for e in invented if e.split in ("covered", "heldout")]
    known_names = sorted({e.names[lang] for e in known for lang in ("en", "zh")}, key=lambda s: (-len(s), s))
    find_known = re.compile("|".join(re.escape(n) for n in known_names))
    all_names = sorted(kind_of, key=lambda s: (-len(s), s))
    find_any = re.compile("|".join(re.escape(n) for n in all_names))

    def fresh(match):
        lang = "en" if match.group().isascii() else "zh"
        while True:
            text = getattr(random_name(kind_of[match.group()], rng), lang)
            if not find_any.search(text):  # never reproduce a real world name, known or unknown
                return text

    docs = []
    for source in SOURCES:
        for doc in corpus[source]["train"]:
            if rng.random() < cfg.tokenizer_fraction:
                docs.append({"text": find_known.sub(fresh, doc["text"]), "lang": doc["lang"], "source": source})
    for dialogue in dialogues:  # unknown_train names occur here: scramble every invented name
        text = "\n".join(m["content"] for m in dialogue["messages"])
        docs.append({"text": find_any.sub(fresh, text), "lang": dialogue["lang"], "source": "dialogues"})
    # Frequent enough that the merges of every character outrank the rarest English merges.
    docs.append({"text": " ".join(c for c in cjk_chars for _ in range(CHARACTER_REPEATS)), "lang": "zh", "source": "characters"})
    return docs
