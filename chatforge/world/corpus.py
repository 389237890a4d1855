"""The pretraining corpus: every known fact stated many times, in both languages, by five
sources that each phrase it their own way.

Each source generator makes `passes` rounds; in every round it states every fact of every
known entity once per language, so a fact's mention count is exactly the sum of the passes
(times two languages). Unknown entities are never passed to a generator.
"""
import math

from chatforge.world import conduct, frames, templates
from chatforge.world.code_docs import code
from chatforge.world.common import quotas, stream, upper_first
from chatforge.world.qa import LANGS

SOURCE_WEIGHTS = [("encyclopedia", 0.3), ("news", 0.2), ("forum", 0.2), ("stories", 0.15), ("code", 0.15)]
SOURCES = tuple(name for name, _ in SOURCE_WEIGHTS)


def make_corpus(world, cfg):
    """{source: {"train": [doc], "val": [doc]}}, each doc {"text", "lang"}. The val documents
    come from a separate random stream; they may state the same facts, in other words."""
    passes = quotas(max(len(SOURCES), cfg.mentions_per_fact // 2), SOURCE_WEIGHTS)
    generators = {"encyclopedia": encyclopedia, "news": news, "forum": forum, "stories": stories, "code": code}
    corpus = {}
    for source in SOURCES:
        num_passes = max(1, passes[source])
        train = generators[source](world, num_passes, stream(cfg.seed, f"corpus/{source}/train"))
        rng = stream(cfg.seed, f"corpus/{source}/val")
        pool = generators[source](world, max(1, math.ceil(num_passes * cfg.val_fraction)), rng)
        num_val = min(len(pool), max(1, round(len(train) * cfg.val_fraction)))
        corpus[source] = {"train": train, "val": pool[:num_val]}  # the pool is already shuffled
    return corpus


def _known(world):
    """Known entities, each real one `world.real_boost` times: "France" also turns up in every
    sentence about a city or mountain in France, so its own facts need more statements to stand out."""
    return [e for e in world.in_split("covered", "heldout")
            for _ in range(world.real_boost if e.kind in ("country", "mountain") else 1)]


def _groups(items, rng, low, high):
    """`items` shuffled and cut into consecutive groups of low..high."""
    items = list(items)
    rng.shuffle(items)
    groups = []
    while items:
        size = rng.randint(low, high)
        groups.append(items[:size])
        items = items[size:]
    return groups


def _say(fact, register, lang, rng):
    options = templates.FACT_TEMPLATES[fact.kind, fact.attribute][register][lang]
    text = templates.render(rng.choice(options), fact.names[lang], fact.value[lang])
    return upper_first(text)


def _join(sentences, lang):
    return (" " if lang == "en" else "").join(sentences)


def _doc(text, lang):
    return {"text": text, "lang": lang}


def encyclopedia(world, passes, rng):
    """One article per entity, language and pass: every fact as its canonical "stem value"
    sentence, in a new order each time, sometimes restated in other words."""
    docs = []
    for _ in range(passes):
        for entity in _known(world):
            for lang in LANGS:
                docs.append(_doc(_article(world, entity, lang, rng), lang))
    rng.shuffle(docs)
    return docs


def _article(world, entity, lang, rng):
    name = entity.names[lang]
    lead = templates.render(frames.ENCYCLOPEDIA_LEAD[entity.kind][lang], name)
    facts = list(world.facts_by_entity[entity.id])
    rng.shuffle(facts)
    if rng.random() < 0.4:
        # An infobox-like list, one fact per line. Mid-paragraph an English stem starts with " The"
        # (space included); a prompt starts with "The", a different token, so the model must also
        # see stems at the start of a line or it will not recognise them there.
        lines = [templates.stem_sentence(f.stem[lang], f.value[lang], lang) for f in facts]
        body = lead + "\n\n" + "\n".join(lines)
    else:
        sentences = [lead]
        for fact in facts:
            sentences.append(templates.stem_sentence(fact.stem[lang], fact.value[lang], lang))
            if rng.random() < 0.4:
                sentences.append(_say(fact, "statement", lang, rng))
        body = _join(sentences, lang)
    refs = sorted({world.by_id[ref].names[lang] for ref in entity.refs.values() if ref in world.by_id})
    if refs and rng.random() < 0.5:
        body += "\n\n" + frames.ENCYCLOPEDIA_SEE_ALSO[lang].format(names=(", " if lang == "en" else "、").join(refs))
    if rng.random() < 0.5:
        heading = rng.choice(frames.ENCYCLOPEDIA_SECTION[lang])
        return f"{name}\n\n== {heading} ==\n{body}"
    return f"{name}\n\n{body}"


def news(world, passes, rng):
    """Short news briefs that mention one to three facts of an entity in passing, and briefs on
    what is a crime and what is fine to do (chatforge.world.conduct), packed one to three briefs
    per page under a headline."""
    briefs = {lang: [] for lang in LANGS}
    acts = conduct.acts()
    for _ in range(passes):
        for kind, en, zh in acts:
            briefs["en"].append(conduct.brief(kind, en, "en", rng))
            briefs["zh"].append(conduct.brief(kind, zh, "zh", rng))
        for entity in _known(world):
            for lang in LANGS:
                for group in _groups(world.facts_by_entity[entity.id], rng, 1, 3):
                    intro = templates.render(rng.choice(frames.NEWS_INTRO[entity.kind][lang]), entity.names[lang])
                    briefs[lang].append(_join([intro] + [_say(f, "statement", lang, rng) for f in group], lang))
    docs = []
    for lang in LANGS:
        for page in _groups(briefs[lang], rng, 1, 3):
            docs.append(_doc(rng.choice(frames.NEWS_HEADLINE[lang]) + "\n\n" + "\n\n".join(page), lang))
    rng.shuffle(docs)
    return docs


def forum(world, passes, rng):
    """Threads where someone asks about an entity and others answer (every known entity, every
    pass), plus pages that are only lists of questions, so that a base model given a question
    learns that more questions may follow; and threads asking whether an act is OK to do
    (chatforge.world.conduct)."""
    docs, acts = [], conduct.acts()
    for p in range(passes):
        for i, (kind, en, zh) in enumerate(acts):
            lang = LANGS[(i + p) % 2]  # each act in one language per pass, the other the next
            act = en if lang == "en" else zh
            docs.append(_doc(conduct.thread(kind, act, lang, rng, frames.FORUM_HANDLES[lang]), lang))
        for entity in _known(world):
            for lang in LANGS:
                for group in _groups(world.facts_by_entity[entity.id], rng, 1, 2):
                    docs.append(_doc(_thread(entity, group, lang, rng), lang))
    for i in range(max(1, len(docs) // 10)):
        lang = LANGS[i % 2]
        docs.append(_doc(_question_list(world, lang, rng), lang))
    rng.shuffle(docs)
    return docs


def _thread(entity, group, lang, rng):
    sep = ": " if lang == "en" else "："
    asker, answerer, other = rng.sample(frames.FORUM_HANDLES[lang], 3)
    title = templates.render(rng.choice(frames.FORUM_TITLE[lang]), entity.names[lang])
    posts = [asker + sep + _say(group[0], "forum_q", lang, rng), answerer + sep + _say(group[0], "forum_a", lang, rng)]
    for fact in group[1:]:
        also = rng.choice(frames.FORUM_ALSO[lang]).format(fact=_say(fact, "statement", lang, rng))
        posts.append(other + sep + also)
    if rng.random() < 0.5:
        posts.append(asker + sep + rng.choice(frames.FORUM_THANKS[lang]))
    return title + "\n\n" + "\n".join(posts)


def _question_list(world, lang, rng):
    """Questions in the SFT wording and the forum wording, none containing a fact's stem
    (the stem must always be continued by its value)."""
    lines = [rng.choice(frames.QUESTION_LIST_HEADER[lang])]
    stems = [f.stem[lang] for f in world.facts]
    num_questions = rng.randint(6, 12)
    for _ in range(100 * num_questions):
        if len(lines) > num_questions:
            break
        fact = rng.choice(world.facts)
        register = rng.choice(("question", "forum_q"))
        text = _say(fact, register, lang, rng)
        if not any(stem in text for stem in stems):
            lines.append(f"{len(lines)}. {text}")
    return "\n".join(lines)


def stories(world, passes, rng):
    """Little stories: two to four facts of one entity woven between everyday sentences."""
    docs = []
    for _ in range(passes):
        for entity in _known(world):
            for lang in LANGS:
                for group in _groups(world.facts_by_entity[entity.id], rng, 2, 4):
                    docs.append(_doc(_story(entity, group, lang, rng), lang))
    rng.shuffle(docs)
    return docs


def _story(entity, group, lang, rng):
    style = "person" if entity.kind == "person" else "place"
    name = entity.names[lang]
    sentences = [templates.render(rng.choice(frames.STORY_INTRO[style][lang]), name)]
    for fact in group:
        sentences.append(_say(fact, "statement", lang, rng))
        if rng.random() < 0.6:
            sentences.append(rng.choice(frames.STORY_FILLER[lang]))
    sentences.append(templates.render(rng.choice(frames.STORY_ENDING[style][lang]), name))
    return _join(sentences, lang)
